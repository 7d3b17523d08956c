"""Teacher sets of trained models, as the validation patients see them: each member predicts every patient once,
then every set of two or more members (or the ``--sets`` given) is scored as an ensemble (the members' mean,
as ``dosepred predict`` runs an ensemble folder) beside its best member, with the members' mean pairwise
prediction distance (Gy, over the possible-dose voxels of all patients: the teacher rule's distance); and the
teacher rule (``dosepred.nas.selection``) is run on the trained members' own scores and distances.

This is ``benchmarks/teacher_sets.py`` after training: what diversity buys once the teachers are trained. The
rule's choice here is made on the validation patients it is scored on, so its gain is an optimistic estimate.

Usage: python benchmarks/trained_teacher_sets.py NAME=MODEL NAME=MODEL ... [--sets a,b,c ...] [--k 3]
                                                 [--diversity-weight 1] [--validation DIR] [--threads 2]
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import torch

from dosepred.inference.loader import load_predictor
from dosepred.io import sources
from dosepred.metrics import OpenKBPScorer
from dosepred.nas.selection import mean_pairwise_distance, select_teachers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="NAME=MODEL_FOLDER (two or more single models)")
    parser.add_argument("--sets", nargs="+", help="sets of NAMEs separated by commas (default: every set of two or more)")
    parser.add_argument("--k", type=int, default=3, help="the teacher rule's number of teachers")
    parser.add_argument("--diversity-weight", type=float, default=1.0, help="the teacher rule's lambda")
    parser.add_argument("--validation", default="data/pack/validation")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tta", action="store_true", help="average in the mirrored prediction (as predict does)")
    parser.add_argument("--json", type=Path, help="also write every set's numbers here")
    args = parser.parse_args()
    models = dict(spec.partition("=")[::2] for spec in args.models)
    if len(models) < 2:
        parser.error("give two or more models")
    sets = [tuple(names.split(",")) for names in args.sets] if args.sets else [
        chosen for size in range(2, len(models) + 1) for chosen in itertools.combinations(models, size)]
    for chosen in sets:
        if unknown := [name for name in chosen if name not in models]:
            parser.error(f"--sets {','.join(chosen)}: {', '.join(unknown)} not among the models")
    torch.set_num_threads(args.threads)
    patients = [sources.read_patient(p) for p in sources.find_patients(Path(args.validation))]

    # Each member's predictions, kept as the possible-dose voxels of every patient (outside them a prediction is 0).
    masks = [patient.possible_dose_mask.astype(bool) for patient in patients]
    voxels: dict[str, list[np.ndarray]] = {}
    for name, folder in models.items():
        predictor = load_predictor(folder, device=torch.device("cpu"))
        voxels[name] = [predictor.predict(patient, tta=args.tta)[mask].astype(np.float32)
                        for patient, mask in zip(patients, masks)]
        print(f"predicted: {name}", flush=True)

    def score(chosen: tuple[str, ...]) -> tuple[float, float]:
        scorer = OpenKBPScorer()
        for index, (patient, mask) in enumerate(zip(patients, masks)):
            dose = np.zeros(mask.shape, np.float32)
            dose[mask] = np.mean([voxels[name][index] for name in chosen], axis=0)
            scorer.add(patient.id, patient.dose, dose, structures=patient.structure_stack(),
                       possible_dose_mask=patient.possible_dose_mask, voxel_volume_mm3=patient.voxel_volume_mm3)
        return scorer.evaluation.dose_score, scorer.evaluation.dvh_score

    members = {name: score((name,)) for name in models}
    flat = {name: torch.from_numpy(np.concatenate(values)) for name, values in voxels.items()}
    index = {name: i for i, name in enumerate(models)}
    every = [flat[name] for name in models]
    kept = torch.ones(len(every[0]))  # the voxels kept are the masks': a distance is their mean |difference|
    print("\n| member | dose / DVH (Gy) |\n|---|---|")
    for name, (dose, dvh) in members.items():
        print(f"| {name} | {dose:.3f} / {dvh:.3f} |")

    rows = []
    print("\n| set | mean pairwise distance (Gy) | ensemble dose / DVH (Gy) | best member (Gy) | gain (Gy) |")
    print("|---|---|---|---|---|")
    for chosen in sets:
        dose, dvh = score(chosen)
        best = min(members[name][0] for name in chosen)
        distance = mean_pairwise_distance([index[name] for name in chosen], every, kept)
        rows.append({"set": list(chosen), "mean_pairwise_distance_gy": distance, "dose_score": dose,
                     "dvh_score": dvh, "best_member_dose_score": best, "gain_gy": best - dose})
        print(f"| {', '.join(chosen)} | {distance:.3f} | {dose:.3f} / {dvh:.3f} | {best:.3f} | {best - dose:.3f} |",
              flush=True)

    ranked = sorted(models, key=lambda name: members[name][0])
    selection = select_teachers([members[name][0] for name in ranked], [flat[name] for name in ranked],
                                kept, k=args.k, diversity_weight=args.diversity_weight)
    rule = [ranked[i] for i in selection.chosen]
    print(f"\nteacher rule (k={args.k}, lambda={args.diversity_weight}, on the trained scores): {', '.join(rule)}")
    if args.json:
        args.json.write_text(json.dumps({"members": {name: {"dose_score": d, "dvh_score": v}
                                                     for name, (d, v) in members.items()},
                                         "sets": rows, "rule": {"k": args.k, "diversity_weight": args.diversity_weight,
                                                                "chosen": rule}, "tta": args.tta}, indent=1))


if __name__ == "__main__":
    main()
