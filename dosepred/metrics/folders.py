"""Scoring a folder of predicted doses against reference patients (``dosepred evaluate``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from dosepred.io import pack, sources
from dosepred.io.errors import PatientDataError
from dosepred.io.patient import Patient
from dosepred.metrics.openkbp import Evaluation, OpenKBPScorer


def score_predictions(reference: Path, predictions: Path, *,
                      progress: Callable[[int, int], None] | None = None,
                      on_patient: Callable[[Patient, np.ndarray], None] | None = None) -> Evaluation:
    """The OpenKBP scores of the doses in ``predictions`` (``<id>.csv`` submissions or ``<id>.nii.gz``) against
    the reference patients (with dose) in ``reference``; ``progress(done, total)`` after each patient, and
    ``on_patient(patient, predicted dose)`` for more measures (``dosepred.metrics.clinical``).

    Raises:
        PatientDataError: a missing prediction or dose, or any unreadable file (every patient must score).
    """
    if not predictions.is_dir():
        raise PatientDataError(predictions, "no such folder" if not predictions.exists() else
                               "not a folder of predictions")
    scorer = OpenKBPScorer()
    with sources.open_patients(reference) as paths:
        ids = [path.name.removesuffix(pack.SUFFIX) for path in paths]  # a patient's id is its name (sources)
        dose_files = {pid: sources.find_dose_file(predictions, pid) for pid in ids}
        missing = [pid for pid, dose_file in dose_files.items() if dose_file is None]
        if missing:
            unread = [pid for pid in missing if (predictions / f"{pid}.dcm").is_file()]
            hint = (f"; {', '.join(unread[:3])}{' ...' if len(unread) > 3 else ''}: an RT Dose (.dcm), which is "
                    "scored as <id>.csv or <id>.nii.gz (predict --format nifti)") if unread else ""
            raise PatientDataError(predictions, f"no prediction for {len(missing)} of {len(ids)} patient(s): "
                                   f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}{hint}")
        for done, path in enumerate(paths, start=1):
            patient = sources.read_patient(path)
            if patient.dose is None:
                raise PatientDataError(path, "reference patient has no dose")
            dose_file = dose_files[patient.id]
            predicted = sources.read_dose_file(dose_file, patient.shape, patient.spacing)
            scorer.add(patient.id, patient.dose, predicted, structures=patient.structure_stack(),
                       possible_dose_mask=patient.possible_dose_mask, voxel_volume_mm3=patient.voxel_volume_mm3)
            if on_patient is not None:
                on_patient(patient, predicted)
            if progress is not None:
                progress(done, len(paths))
    return scorer.evaluation
