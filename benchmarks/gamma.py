"""Gamma: dosepred's torch search against pymedphys.gamma, on real predictions.

For each patient the default model predicts the dose (TTA); the predicted dose is the evaluation, the
reference dose the reference. dosepred's gamma runs on the whole 128^3 grid (timed); both run on a
sub-volume around the PTV70 (pymedphys, with scipy interpolation, is too slow for whole volumes here),
where their pass rates are compared. Global gamma, 10 % low-dose threshold of the reference maximum.

    python benchmarks/gamma.py [--validation data/pack/validation] [--patients 3] [--box 32]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from dosepred.devices import resolve_device
from dosepred.inference.loader import load_predictor
from dosepred.io import sources
from dosepred.metrics.gamma import gamma_index

CRITERIA = ((3.0, 2.0), (3.0, 3.0), (2.0, 2.0))


def main() -> None:
    import pymedphys

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--validation", type=Path, default=Path("data/pack/validation"))
    parser.add_argument("--patients", type=int, default=3)
    parser.add_argument("--box", type=int, default=32, help="sub-volume edge (voxels) for the comparison")
    args = parser.parse_args()
    device = resolve_device("auto")
    predictor = load_predictor(None, device=device)
    print(f"torch threads {torch.get_num_threads()}, device {device}\n")
    print("| patient | criteria | dosepred, whole grid: pass % (s) | sub-volume: dosepred % | pymedphys % (s) | difference (pp) |")
    print("|---|---|---|---|---|---|")
    for path in sources.find_patients(args.validation)[: args.patients]:
        patient = sources.read_patient(path)
        predicted = predictor.predict(patient, tta=True)
        centre = np.argwhere(patient.structures["PTV70"]).mean(0).astype(int)
        box = tuple(slice(max(0, c - args.box // 2), c + args.box // 2) for c in centre)
        reference, evaluation = patient.dose[box], predicted[box]
        axes = tuple(np.arange(n) * s for n, s in zip(reference.shape, patient.spacing))
        for dose_percent, distance in CRITERIA:
            started = time.perf_counter()
            whole = gamma_index(patient.dose, predicted, patient.spacing, dose_percent=dose_percent,
                                distance_mm=distance, device=device)
            whole_s = time.perf_counter() - started
            ours = gamma_index(reference, evaluation, patient.spacing, dose_percent=dose_percent, distance_mm=distance,
                               device=device)
            started = time.perf_counter()
            theirs = pymedphys.gamma(axes, reference, axes, evaluation, dose_percent, distance,
                                     lower_percent_dose_cutoff=10, interp_fraction=10, max_gamma=1.1,
                                     global_normalisation=float(reference.max()), interp_algo="scipy")
            theirs_s = time.perf_counter() - started
            theirs_rate = 100 * np.mean(theirs[~np.isnan(theirs)] <= 1)
            print(f"| {patient.id} | {dose_percent:g} %/{distance:g} mm | {whole.pass_rate:.2f} ({whole_s:.2f}) | "
                  f"{ours.pass_rate:.2f} | {theirs_rate:.2f} ({theirs_s:.1f}) | {ours.pass_rate - theirs_rate:+.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
