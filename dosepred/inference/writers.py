"""Writers of predicted doses (torch-free): OpenKBP submission CSVs or NIfTI, always atomic."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import numpy as np

from dosepred.io import nifti
from dosepred.io.files import atomic_file
from dosepred.io.openkbp_csv import write_submission
from dosepred.io.patient import Patient, check_patient_id


class OutputFormat(str, Enum):
    openkbp = "openkbp-csv"
    nifti = "nifti"


def output_path(folder: Path, patient_id: str, output_format: OutputFormat) -> Path:
    """Where a patient's output goes; the id is checked again here because it becomes a file name."""
    check_patient_id(patient_id, folder)
    return folder / f"{patient_id}{'.csv' if output_format is OutputFormat.openkbp else '.nii.gz'}"


def write_dose(patient: Patient, dose: np.ndarray, path: Path, output_format: OutputFormat) -> None:
    """Write a predicted dose atomically: OpenKBP submission CSV or NIfTI in the OpenKBP frame."""
    if output_format is OutputFormat.openkbp:
        write_submission(dose, path)
    else:
        with atomic_file(path) as tmp:
            nifti.write_volume(dose.astype(np.float32), patient.spacing, tmp)
