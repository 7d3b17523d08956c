"""Predict a folder of patients: one output per patient, failures isolated, finished ones skippable."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from dosepred.io import dicom_in, pack, sources
from dosepred.io.errors import PatientDataError
from dosepred.io.files import remove_stale
from dosepred.io.patient import require_grid
from dosepred.inference.ensemble import EnsemblePredictor
from dosepred.inference.predictor import Predictor
from dosepred.inference.writers import OutputFormat, check_format, default_format, output_path, write_dose
from dosepred.io.roi_names import RoiNames, UnmappedRoiWarning


UNCERTAINTY_SUFFIX = "_uncertainty"


@dataclass
class BatchReport:
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    warnings: dict[str, list[str]] = field(default_factory=dict)  # e.g. ROIs no model input takes


def predict_patients(predictor: Predictor | EnsemblePredictor, paths: Iterable[Path], output: Path, *,
                     output_format: OutputFormat | None, tta: bool, resume: bool, roi_names: RoiNames | None = None,
                     model: str = "", on_patient: Callable[[str], None] | None = None) -> BatchReport:
    """Predict each patient in ``paths`` into ``output``; a failing patient is recorded and skipped.

    ``output_format`` None writes each patient as it came in: DICOM patients as RT Dose, others as OpenKBP
    CSV. Models that give an uncertainty map (ensembles, students) also write ``<id>_uncertainty`` beside the
    dose (NIfTI beside an RT Dose: it is no dose). ROIs that no model input takes are listed in
    ``report.warnings``. Temporary files that a killed earlier run left in ``output`` are removed first.
    ``model`` names the model in the outputs that have room for it (RT Dose, NIfTI).
    """
    report = BatchReport()
    remove_stale(output)
    names: set[str] = set()  # as a case-blind file system sees them
    for path in paths:
        name = path.name.removesuffix(pack.SUFFIX)
        chosen = output_format or default_format(dicom_in.is_dicom_folder(path))
        try:
            if name.casefold() in names:  # a folder pt_1 beside a pt_1.dpk: one would overwrite the other's output
                raise PatientDataError(path, f"another input has the name {name!r}: both would be written to one place")
            if name.casefold().endswith(UNCERTAINTY_SUFFIX):  # pt_1_uncertainty's dose would be pt_1's spread
                raise PatientDataError(path, f"a patient id may not end in {UNCERTAINTY_SUFFIX!r}, the name of "
                                       "another patient's uncertainty map: rename it")
            names.add(name.casefold())
            if resume and output_path(output, name, chosen).is_file():
                report.skipped.append(name)
                continue
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", UnmappedRoiWarning)
                patient = sources.read_patient(path, roi_names)
            if caught:
                report.warnings[name] = [str(w.message) for w in caught]
            require_grid(patient)
            check_format(patient, chosen)
            dose, uncertainty = predictor.predict_with_uncertainty(patient, tta=tta)
            if uncertainty is not None:
                spread_format = OutputFormat.nifti if chosen is OutputFormat.rtdose else chosen
                write_dose(patient, uncertainty, output_path(output, patient.id + UNCERTAINTY_SUFFIX, spread_format),
                           spread_format, model=model, what="uncertainty of the predicted dose")
            write_dose(patient, dose, output_path(output, patient.id, chosen), chosen, model=model)
            report.written.append(patient.id)
        except PatientDataError as error:  # said relative to the patient (an archive's lies in a temporary folder)
            where = Path(error.where)
            inside = where.relative_to(path) if where.is_relative_to(path) else where
            report.failed[name] = error.problem if inside == Path() else f"{inside}: {error.problem}"
        except (OSError, RuntimeError, ValueError) as error:
            report.failed[name] = str(error)
        except Exception as error:  # a reader's unforeseen fault stays this patient's: the batch goes on
            report.failed[name] = f"{path}: unexpected {type(error).__name__} while reading or predicting"
        finally:
            if on_patient is not None:
                on_patient(name)
    return report
