"""Writers of predicted doses (torch-free): OpenKBP submission CSVs, NIfTI or DICOM RT Dose, always atomic."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import numpy as np

from dosepred.io import nifti
from dosepred.io.dicom import write_rt_dose
from dosepred.io.errors import PatientDataError
from dosepred.io.files import atomic_file
from dosepred.io.openkbp_csv import write_submission
from dosepred.io.patient import Patient, check_patient_id


class OutputFormat(str, Enum):
    openkbp = "openkbp-csv"
    nifti = "nifti"
    rtdose = "rtdose"


_SUFFIXES = {OutputFormat.openkbp: ".csv", OutputFormat.nifti: ".nii.gz", OutputFormat.rtdose: ".dcm"}


def default_format(is_dicom: bool) -> OutputFormat:
    """What a patient's dose is written as when no format is asked for: as it came in."""
    return OutputFormat.rtdose if is_dicom else OutputFormat.openkbp


def output_path(folder: Path, patient_id: str, output_format: OutputFormat) -> Path:
    """Where a patient's output goes; the id is checked again here because it becomes a file name."""
    check_patient_id(patient_id, folder)
    return folder / f"{patient_id}{_SUFFIXES[output_format]}"


def write_dose(patient: Patient, dose: np.ndarray, path: Path, output_format: OutputFormat, *, model: str = "",
               what: str = "predicted dose") -> None:
    """Write a predicted dose atomically. A DICOM patient's NIfTI and RT Dose lie on its CT's grid; an
    OpenKBP CSV only exists on OpenKBP's grid, so a DICOM patient has none. ``model`` (the model that predicted
    it) and ``what`` it is are recorded where the format has room: an RT Dose's ManufacturerModelName, a NIfTI
    header's description (an OpenKBP CSV has none)."""
    check_format(patient, output_format)
    if output_format is OutputFormat.rtdose:
        write_rt_dose(patient, dose, path, model=model)
    elif output_format is OutputFormat.openkbp:
        write_submission(dose, path)
    else:
        description = f"{what} (Gy), dosepred {model}".strip()
        with atomic_file(path) as tmp:
            if patient.clinic is not None:
                nifti.write_on_grid(patient.clinic.dose_on_ct(dose), patient.clinic.ct_grid, tmp,
                                    description=description)
            else:
                nifti.write_volume(dose.astype(np.float32), patient.spacing, tmp, description=description)


def check_format(patient: Patient, output_format: OutputFormat) -> None:
    """Refuse a format the patient cannot be written in (before its prediction, not after)."""
    if output_format is OutputFormat.openkbp and patient.clinic is not None:
        raise PatientDataError(patient.source or patient.id, "an OpenKBP CSV holds a dose on OpenKBP's grid, not "
                               "on a clinic CT: use --format rtdose or --format nifti for DICOM patients")
