"""The DICOM route against the OpenKBP route, on real validation patients.

Each patient is written out as a clinic would hold it (``dosepred.io.dicom_export``: CT at 0.9766 mm on
slices of the patient's own thickness, TG-263 contour names, an origin far from 0), read back by
``dosepred predict``'s DICOM reader onto the working grid, predicted, written as RT Dose on the CT, and
that RT Dose is read and interpolated back onto the patient's OpenKBP grid to be scored against the
reference dose. The same model predicts the original patient directly. Printed: both routes' OpenKBP
scores, their difference, the dose difference between the two predictions, the DICOM route's time per
patient (read + predict + write; the export is not counted), and dciodvfy's verdict on the RT Doses.

    python benchmarks/dicom_round_trip.py [--validation data/pack/validation] [--patients 10] [--no-tta]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from dosepred.devices import resolve_device
from dosepred.inference.loader import load_predictor
from dosepred.io import clinic, sources
from dosepred.io.dicom import read_rt_dose, write_rt_dose
from dosepred.io.dicom_export import write_dicom_patient
from dosepred.io.dicom_in import read_dicom_patient
from dosepred.metrics.openkbp import OpenKBPScorer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--validation", type=Path, default=Path("data/pack/validation"))
    parser.add_argument("--patients", type=int, default=10)
    parser.add_argument("--model", default=None)
    parser.add_argument("--no-tta", dest="tta", action="store_false")
    args = parser.parse_args()
    predictor = load_predictor(args.model, device=resolve_device("auto"))
    direct, dicom = OpenKBPScorer(), OpenKBPScorer()
    seconds, gaps, verdicts = [], [], []
    work = Path(tempfile.mkdtemp(prefix="dicom-round-trip-"))
    try:
        for path in sources.find_patients(args.validation)[: args.patients]:
            patient = sources.read_patient(path)
            folder = work / patient.id
            grid = write_dicom_patient(patient, folder, origin=(-231.7, -152.3, 87.5))
            started = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                clinic_patient = read_dicom_patient(folder)
            predicted = predictor.predict(clinic_patient, tta=args.tta)
            write_rt_dose(clinic_patient, predicted, work / f"{patient.id}.dcm")
            seconds.append(time.perf_counter() - started)
            rt_dose, rt_grid = read_rt_dose(work / f"{patient.id}.dcm")
            back = clinic.to_patient_axes(clinic.resample(rt_dose, rt_grid, grid, linear=True, default=0.0))
            back = np.where(patient.possible_dose_mask, back, 0.0).astype(np.float32)
            straight = predictor.predict(patient, tta=args.tta)
            for scorer, dose in ((direct, straight), (dicom, back)):
                scorer.add(patient.id, patient.dose, dose, structures=patient.structure_stack(),
                           possible_dose_mask=patient.possible_dose_mask, voxel_volume_mm3=patient.voxel_volume_mm3)
            gaps.append(float(np.abs(back - straight)[patient.possible_dose_mask].mean()))
            verdicts.append(_validate(work / f"{patient.id}.dcm"))
            shutil.rmtree(folder)
            print(f"{patient.id}: spacing {patient.spacing} mm, DICOM route {seconds[-1]:.1f} s, mean |DICOM - "
                  f"direct| {gaps[-1]:.3f} Gy in the possible-dose mask, dciodvfy: {verdicts[-1]}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    a, b = direct.evaluation, dicom.evaluation
    print(f"\n{a.n} patients, model {args.model or 'default'}, TTA {args.tta}")
    print("| route | dose score (Gy) | DVH score (Gy) |\n|---|---|---|")
    print(f"| OpenKBP (direct) | {a.dose_score:.4f} | {a.dvh_score:.4f} |")
    print(f"| DICOM (CT + RTSTRUCT -> RT Dose -> OpenKBP grid) | {b.dose_score:.4f} | {b.dvh_score:.4f} |")
    print(f"| difference | {b.dose_score - a.dose_score:+.4f} | {b.dvh_score - a.dvh_score:+.4f} |")
    print(f"mean |DICOM - direct| in the possible-dose mask: {np.mean(gaps):.3f} Gy (max over patients {max(gaps):.3f})")
    print(f"DICOM route time per patient: mean {np.mean(seconds):.1f} s, max {max(seconds):.1f} s")
    print(f"dciodvfy: {sum(v == 'no error' for v in verdicts)} of {len(verdicts)} RT Doses without error")


def _validate(path: Path) -> str:
    if shutil.which("dciodvfy") is None:
        return "not installed (apt install dicom3tools)"
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
    return "no error" if not errors else "; ".join(errors)


if __name__ == "__main__":
    main()
