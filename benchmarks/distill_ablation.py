"""The distillation ablation table: validation scores, size and CPU latency of teachers, ensemble and students.

Each model (a model folder or an ensemble folder) predicts every validation patient (128^3; with ``--tta``
averaging in the mirrored prediction, as ``dosepred predict`` does by default) and is scored with the
OpenKBP dose and DVH scores; latency is the median wall time of one prediction over the first patients
after a warm-up. ``--reference NAME`` adds each model's distance to that model (one of those listed; it runs
first): the OpenKBP dose score with its prediction in place of the truth, i.e. how closely a student follows
its teachers beside how closely it follows the truth; and, where both give an uncertainty (a student's second
channel, an ensemble's spread), the mean |difference| of the two over the possible-dose voxels (Gy): how well a
student learnt its teachers' disagreement (on the reference's own row: its mean spread, the error of a student
that predicts none). The reference's spread is always that of its mirrored members, with or without ``--tta``:
it is the spread a student is distilled to predict (and the one ``dosepred predict`` writes).

Usage: python benchmarks/distill_ablation.py NAME=MODEL [NAME=MODEL ...] [--validation DIR] [--threads 2] [--tta]
                                             [--reference NAME]
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
from dosepred.metrics.openkbp import dose_error


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
    parser.add_argument("--reference", help="NAME of a listed model: report each model's distance to it (Gy)")
    args = parser.parse_args()
    models = [spec.partition("=")[::2] for spec in args.models]
    names = [name for name, _ in models]
    if args.reference is not None:
        if args.reference not in names:
            parser.error(f"--reference {args.reference!r} is not one of the listed models: {', '.join(names)}")
        models.sort(key=lambda model: model[0] != args.reference)  # the reference predicts first
    torch.set_num_threads(args.threads)
    patients = [sources.read_patient(p) for p in sources.find_patients(Path(args.validation))]
    reference: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    distance_columns = f" {'to ' + args.reference:>14s} {'spread to it':>12s}" if args.reference else ""
    print(f"{'model':28s} {'dose (Gy)':>10s} {'DVH (Gy)':>9s}{distance_columns} {'params':>10s} {'CPU s/patient':>14s}")
    for name, folder in models:
        predictor = load_predictor(folder, device=torch.device("cpu"))
        scorer = OpenKBPScorer()
        distances, spread_distances = [], []
        for patient in patients:
            dose, uncertainty = predictor.predict_with_uncertainty(patient, tta=args.tta)
            scorer.add(patient.id, patient.dose, dose,
                       structures=patient.structure_stack(), possible_dose_mask=patient.possible_dose_mask,
                       voxel_volume_mm3=patient.voxel_volume_mm3)
            if name == args.reference:
                if uncertainty is not None and not args.tta:
                    uncertainty = predictor.predict_with_uncertainty(patient, tta=True)[1]
                reference[patient.id] = dose, uncertainty
                if uncertainty is not None:  # its own row: the error of predicting no spread at all
                    spread_distances.append(dose_error(np.zeros_like(uncertainty), uncertainty, patient.possible_dose_mask))
            elif args.reference:
                reference_dose, reference_uncertainty = reference[patient.id]
                distances.append(dose_error(reference_dose, dose, patient.possible_dose_mask))
                if uncertainty is not None and reference_uncertainty is not None:
                    spread_distances.append(dose_error(reference_uncertainty, uncertainty, patient.possible_dose_mask))
        seconds = []
        for patient in patients[: args.latency_patients + 1]:
            start = time.perf_counter()
            predictor.predict(patient, tta=args.tta)
            seconds.append(time.perf_counter() - start)
        latency = float(np.median(seconds[1:] or seconds))  # one patient: no warm-up to leave out
        distance = ""
        if args.reference:
            distance = f" {np.mean(distances):14.3f}" if distances else f" {'':14s}"
            distance += f" {np.mean(spread_distances):12.3f}" if spread_distances else f" {'':12s}"
        print(f"{name:28s} {scorer.evaluation.dose_score:10.3f} {scorer.evaluation.dvh_score:9.3f}{distance} "
              f"{parameters(predictor):10d} {latency:14.3f}", flush=True)


if __name__ == "__main__":
    main()
