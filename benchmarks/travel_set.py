"""What travels to a lent GPU machine: the tracked files plus the carried folders, against the device's
64 MiB limit and the 60 MiB target, what a coarser CT tolerance in the training pack would save, and what
it costs: the model's scores on validation patients whose CT went through the same coarser coding.

    python benchmarks/travel_set.py [--carry data/pack .whl] [--ct-tolerance 1 3 5 10] [--sample 12]
                                    [--model unet-beams-128 --validation data/pack/validation]

The carried folders are what configs/gpu_full.yaml reads: the training split and the first 12 validation
patients packed with CT coded to 32 HU (`dosepred prepare … --format pack --ct-tolerance 32`), and the wheels
the GPU image lacks (monai, pyjpegls; see the README's GPU section). The CT-tolerance estimate re-codes the
first `--sample` training patients and scales their size to the whole split.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

from dosepred.io import pack, sources

MIB = 2**20
LIMIT_MIB, TARGET_MIB = 64, 60


def tracked_sizes(root: Path) -> dict[str, int]:
    """Bytes of the git-tracked files, by top-level folder (dosepred/models/ by model)."""
    names = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True).stdout.split(b"\0")
    groups: dict[str, int] = {}
    for name in filter(None, names):
        path = root / name.decode()
        if path.is_file():
            parts = Path(name.decode()).parts
            if parts[:2] == ("dosepred", "models") and len(parts) > 3:
                group = "/".join(parts[:3])
            else:
                group = parts[0] if len(parts) > 1 else "(top)"
            groups[group] = groups.get(group, 0) + path.stat().st_size
    return groups


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--carry", nargs="*", default=["data/pack/train-ct32", "data/pack/val12-ct32", ".whl"])
    parser.add_argument("--ct-tolerance", type=int, nargs="*", default=[])
    parser.add_argument("--sample", type=int, default=12)
    parser.add_argument("--model", help="also score this model on validation CT coded at each tolerance")
    parser.add_argument("--validation", type=Path, default=Path("data/pack/validation"))
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[1]
    tracked = tracked_sizes(root)
    carried = {name: folder_size(root / name) for name in args.carry}
    print("| part | MiB |\n|---|---|")
    for name, size in sorted(tracked.items(), key=lambda item: -item[1]):
        print(f"| tracked: {name} | {size / MIB:.2f} |")
    for name, size in carried.items():
        print(f"| carried: {name} | {size / MIB:.2f} |" + ("" if size else " (absent)"))
    total = sum(tracked.values()) + sum(carried.values())
    verdict = "fits the target" if total <= TARGET_MIB * MIB else "over the target" if total <= LIMIT_MIB * MIB else "over the device's limit"
    print(f"| **total** | **{total / MIB:.2f}** ({verdict}: target {TARGET_MIB}, limit {LIMIT_MIB}) |")
    train = root / "data/pack/train"  # the split at the pack's default tolerance (1 HU)
    if args.ct_tolerance and train.is_dir():
        paths = sources.find_patients(train)
        sample = paths[: args.sample]
        stored = sum(p.stat().st_size for p in sample)
        print(f"\nCT tolerance, re-coding {len(sample)} of {len(paths)} training patients (scaled to the split):")
        print("| CT tolerance (HU) | train pack MiB | change |\n|---|---|---|")
        with tempfile.TemporaryDirectory() as tmp:
            for tolerance in args.ct_tolerance:
                size = 0
                for path in sample:
                    out = Path(tmp) / path.name
                    pack.write_patient(pack.read_patient(path), out, ct_tolerance_hu=tolerance)
                    size += out.stat().st_size
                scaled = carried.get("data/pack/train", folder_size(train)) * size / stored
                print(f"| {tolerance} | {scaled / MIB:.2f} | {100 * (size / stored - 1):+.1f}% |")
    if args.model and args.ct_tolerance:
        print(f"\nWhat it costs: {args.model} (no TTA) on the first {args.sample} validation patients, their CT coded "
              "at each tolerance:")
        print("| CT tolerance (HU) | dose score (Gy) | DVH score (Gy) | mean abs change of the prediction (Gy) |")
        print("|---|---|---|---|")
        for tolerance, (dose, dvh, change) in model_cost(args.model, args.validation, args.ct_tolerance, args.sample).items():
            print(f"| {tolerance} | {dose:.4f} | {dvh:.4f} | {change:.4f} |")


def model_cost(model: str, validation: Path, tolerances: list[int], sample: int) -> dict[int, tuple[float, float, float]]:
    """Per tolerance: the model's dose and DVH scores and the mean absolute change of its prediction (inside the
    possible-dose mask) against the prediction from the CT as stored."""
    import numpy as np

    from dosepred.devices import resolve_device
    from dosepred.inference.loader import load_predictor
    from dosepred.metrics.openkbp import OpenKBPScorer

    predictor = load_predictor(model, device=resolve_device("auto"))
    scorers = {tolerance: OpenKBPScorer() for tolerance in tolerances}
    changes: dict[int, list[float]] = {tolerance: [] for tolerance in tolerances}
    with tempfile.TemporaryDirectory() as tmp:
        for path in sources.find_patients(validation)[:sample]:
            patient = sources.read_patient(path)
            stored = predictor.predict(patient, tta=False)
            mask = patient.possible_dose_mask.astype(bool)
            for tolerance in tolerances:
                coded = Path(tmp) / path.name
                pack.write_patient(patient, coded, ct_tolerance_hu=tolerance)
                recoded = pack.read_patient(coded)
                predicted = predictor.predict(recoded, tta=False)
                scorers[tolerance].add(patient.id, patient.dose, predicted, structures=patient.structure_stack(),
                                       possible_dose_mask=patient.possible_dose_mask,
                                       voxel_volume_mm3=patient.voxel_volume_mm3)
                changes[tolerance].append(float(np.abs(predicted - stored)[mask].mean()))
    return {tolerance: (scorers[tolerance].evaluation.dose_score, scorers[tolerance].evaluation.dvh_score,
                        float(np.mean(changes[tolerance]))) for tolerance in tolerances}


if __name__ == "__main__":
    main()
