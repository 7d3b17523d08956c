"""Write the predictions of two trivial predictors as OpenKBP submission CSVs, as floors to beat.

- zeros: no dose anywhere.
- prescription: each PTV at its prescription (the highest where PTVs overlap), zero elsewhere.

Usage: python benchmarks/trivial_predictors.py SOURCE -o OUT --predictor zeros|prescription
then: dosepred evaluate SOURCE OUT
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from dosepred.io import sources
from dosepred.io.openkbp_csv import write_submission
from dosepred.io.patient import PRESCRIPTION_GY, Patient


def zeros(patient: Patient) -> np.ndarray:
    return np.zeros(patient.shape, dtype=np.float32)


def prescription(patient: Patient) -> np.ndarray:
    dose = np.zeros(patient.shape, dtype=np.float32)
    for target, gy in sorted(PRESCRIPTION_GY.items(), key=lambda item: item[1]):
        if target in patient.structures:
            dose[patient.structures[target]] = gy
    return dose * patient.possible_dose_mask


PREDICTORS = {"zeros": zeros, "prescription": prescription}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="split folder, tarball or pack folder of patients")
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--predictor", choices=sorted(PREDICTORS), required=True)
    args = parser.parse_args()
    predict = PREDICTORS[args.predictor]
    with sources.open_patients(args.source) as paths:
        for path in paths:
            patient = sources.read_patient(path)
            write_submission(predict(patient), args.output / f"{patient.id}.csv")
    print(f"wrote {len(paths)} {args.predictor} predictions to {args.output}")


if __name__ == "__main__":
    main()
