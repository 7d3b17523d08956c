"""Re-score every shipped model on the validation patients, each with the metric its model card reports.

Dose models and ensembles: OpenKBP dose and DVH scores with test-time mirroring; the detector: ZSD Recall@100
at IoU 0.5 and the GZSD harmonic mean, every slice holding a structure; the few-shot encoders: 5-way 1- and
5-shot accuracy over the cards' 600 episodes (seed 0, 15 queries per class). Run it after any change that
could move a shipped model's numbers (a refactor must leave them as they were).

    python benchmarks/shipped_models.py [--validation data/pack/validation] [--only unet-beams-128 ...]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from dosepred.detection.data import SliceSet
from dosepred.detection.evaluation import evaluate_detector
from dosepred.detection.training import load_detector
from dosepred.devices import resolve_device
from dosepred.fewshot.data import load_patches
from dosepred.fewshot.evaluate import evaluate as evaluate_fewshot
from dosepred.fewshot.train import load_encoder
from dosepred.engine.trainer import validation_scores
from dosepred.inference.loader import load_predictor
from dosepred.io import sources
from dosepred.models import MODELS_DIR, read_model, shipped_models

FEWSHOT = ("fewshot-ct/protonet", "fewshot-ct/random-views", "fewshot-ct/learned-views")


def dose_scores(name: str, validation: Path) -> str:
    predictor = load_predictor(name, device=resolve_device("auto"))
    paths = sources.find_patients(validation)
    scores = validation_scores(predictor, paths, tta=True)
    return f"dose {scores['val_dose_score']:.4f} Gy, DVH {scores['val_dvh_score']:.4f} Gy ({len(paths)} patients, TTA)"


def detector_scores(name: str, validation: Path) -> str:
    result = evaluate_detector(load_detector(name), SliceSet.from_source(validation, slice_step=1))
    zsd, gzsd = result["zsd"], result["gzsd"]
    return (f"ZSD R@100 IoU0.5 {100 * zsd['recall@100_iou0.5']:.1f}%, GZSD harmonic mean "
            f"{100 * gzsd['harmonic_mean']:.1f}%")


def fewshot_scores(name: str, validation: Path) -> str:
    encoder, config = load_encoder(name)
    patches = load_patches("ct", validation, novel=True, size=config["data"]["patch_size"],
                           slices=config["data"]["slices"])
    accuracies = [evaluate_fewshot(encoder, patches, ways=5, shots=shots, queries=15, episodes=600, seed=0)
                  for shots in (1, 5)]
    return f"5-way 1-shot {accuracies[0]}%, 5-shot {accuracies[1]}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--validation", type=Path, default=Path("data/pack/validation"))
    parser.add_argument("--only", nargs="+", help="these models only")
    args = parser.parse_args()
    score = {"dose": dose_scores, "ensemble": dose_scores, "detector": detector_scores, "fewshot": fewshot_scores}
    print("| model | kind | validation | seconds |\n|---|---|---|---|")
    for name in args.only or [*shipped_models(), *FEWSHOT]:
        kind = read_model(MODELS_DIR / name).kind
        started = time.perf_counter()
        result = score[kind](name, args.validation)
        print(f"| {name} | {kind} | {result} | {time.perf_counter() - started:.0f} |", flush=True)


if __name__ == "__main__":
    main()
