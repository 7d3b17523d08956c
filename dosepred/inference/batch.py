"""Predict a folder of patients: one output per patient, failures isolated, finished ones skippable."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from dosepred.io import sources
from dosepred.io.errors import PatientDataError
from dosepred.io.files import remove_stale
from dosepred.io.patient import require_grid
from dosepred.inference.ensemble import EnsemblePredictor
from dosepred.inference.predictor import Predictor
from dosepred.inference.writers import OutputFormat, output_path, write_dose


@dataclass
class BatchReport:
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def predict_patients(predictor: Predictor | EnsemblePredictor, paths: Iterable[Path], output: Path, *, output_format: OutputFormat,
                     tta: bool, resume: bool, on_patient: Callable[[str], None] | None = None) -> BatchReport:
    """Predict each patient in ``paths`` into ``output``; a failing patient is recorded and skipped.

    Models that give an uncertainty map (ensembles, students) also write ``<id>_uncertainty`` beside the dose.
    Temporary files that a killed earlier run left in ``output`` are removed first.
    """
    report = BatchReport()
    remove_stale(output)
    for path in paths:
        name = path.name.removesuffix(".dpk")
        try:
            if resume and output_path(output, name, output_format).is_file():
                report.skipped.append(name)
                continue
            patient = sources.read_patient(path)
            if patient.id != name:  # outputs are named by id: another name would break --continue and collide
                raise PatientDataError(path, f"holds patient {patient.id!r}; a pack file's name must be its id")
            require_grid(patient)
            dose, uncertainty = predictor.predict_with_uncertainty(patient, tta=tta)
            if uncertainty is not None:
                write_dose(patient, uncertainty, output_path(output, f"{patient.id}_uncertainty", output_format),
                           output_format)
            write_dose(patient, dose, output_path(output, patient.id, output_format), output_format)
            report.written.append(patient.id)
        except (PatientDataError, OSError, RuntimeError, ValueError) as error:
            report.failed[name] = str(error)
        finally:
            if on_patient is not None:
                on_patient(name)
    return report
