"""The distillation ablation table: validation scores, size and CPU latency of teachers, ensemble and students.

Each model (a model folder or an ensemble folder) predicts every validation patient (128^3; with ``--tta``
averaging in the mirrored prediction, as ``dosepred predict`` does by default) and is scored with the
OpenKBP dose and DVH scores; latency is the median wall time of one prediction over the first patients
after a warm-up.

Usage: python benchmarks/distill_ablation.py NAME=MODEL [NAME=MODEL ...] [--validation DIR] [--threads 2] [--tta]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from dosepred.io import sources
from dosepred.inference.ensemble import EnsemblePredictor
from dosepred.inference.loader import load_predictor
from dosepred.metrics import OpenKBPScorer


def parameters(predictor) -> int:  # noqa: ANN001
    members = predictor.members if isinstance(predictor, EnsemblePredictor) else [predictor]
    return sum(p.numel() for member in members for p in member.network.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="NAME=MODEL_FOLDER")
    parser.add_argument("--validation", default="data/pack/validation")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--latency-patients", type=int, default=5)
    parser.add_argument("--tta", action="store_true", help="average in the mirrored prediction (as predict does)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    patients = [sources.read_patient(p) for p in sources.find_patients(Path(args.validation))]
    print(f"{'model':28s} {'dose (Gy)':>10s} {'DVH (Gy)':>9s} {'params':>10s} {'CPU s/patient':>14s}")
    for spec in args.models:
        name, _, folder = spec.partition("=")
        predictor = load_predictor(folder, device=torch.device("cpu"))
        scorer = OpenKBPScorer()
        for patient in patients:
            scorer.add(patient.id, patient.dose, predictor.predict(patient, tta=args.tta),
                       structures=patient.structure_stack(), possible_dose_mask=patient.possible_dose_mask,
                       voxel_volume_mm3=patient.voxel_volume_mm3)
        seconds = []
        for patient in patients[: args.latency_patients + 1]:
            start = time.perf_counter()
            predictor.predict(patient, tta=args.tta)
            seconds.append(time.perf_counter() - start)
        latency = float(np.median(seconds[1:]))
        print(f"{name:28s} {scorer.evaluation.dose_score:10.3f} {scorer.evaluation.dvh_score:9.3f} "
              f"{parameters(predictor):10d} {latency:14.3f}", flush=True)


if __name__ == "__main__":
    main()
