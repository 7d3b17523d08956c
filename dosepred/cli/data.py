"""dosepred prepare | phantom | evaluate: patients in and out, and scoring."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dosepred.cli.common import (GammaText, JsonFile, ObjectivesFile, app, console, fail, numbers, output_folder,
                                 progress_bar, write_json)
from dosepred.io import nifti, openkbp_csv, pack, sources
from dosepred.io.errors import PatientDataError
from dosepred.io.files import remove_stale
from dosepred.io.phantom import make_phantom

class PrepareFormat(str, Enum):
    nifti = "nifti"
    pack = "pack"


class PhantomFormat(str, Enum):  # the patient folder formats with a writer (RT Dose is a prediction's, not a patient's)
    openkbp = "openkbp-csv"
    nifti = "nifti"


@app.command()
def prepare(
    source: Annotated[Path, typer.Argument(help="A folder of patients (OpenKBP CSV, NIfTI, pack or DICOM), a .zip "
                                           "or tar archive of one, or one patient.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to write the converted patients to.")],
    format: Annotated[PrepareFormat, typer.Option("--format", help="nifti: one folder of .nii.gz per patient; "
                                                  "pack: one compact file per patient.")] = PrepareFormat.nifti,
    ct_tolerance: Annotated[int, typer.Option("--ct-tolerance", min=0, help="pack: every CT voxel comes back within "
                                              "this many HU (a coarser coding makes a smaller pack).")] = pack.CT_TOLERANCE_HU,
) -> None:
    """Convert patients to NIfTI folders or to the compact pack. Failing patients are listed at the end."""
    failures: list[str] = []
    written: set[str] = set()  # ids (as a case-blind file system sees them) this run has written
    remove_stale(output_folder(output))  # what a killed earlier run left half-written there
    try:
        with sources.open_patients(source) as paths, progress_bar() as progress:
            for path in progress.track(paths, description=f"prepare ({format.value})"):
                try:
                    patient = sources.read_patient(path)
                    if patient.id.casefold() in written:
                        raise PatientDataError(path, f"another patient of {source} has the id {patient.id!r}: "
                                               "both would be written to one place")
                    written.add(patient.id.casefold())
                    if format is PrepareFormat.nifti:
                        nifti.write_patient(patient, output / patient.id)
                    else:
                        pack.write_patient(patient, output / f"{patient.id}{pack.SUFFIX}", ct_tolerance_hu=ct_tolerance)
                except PatientDataError as error:
                    failures.append(str(error))
                except OSError as error:  # a full disk, no permission, a file where a folder goes
                    failures.append(f"{path}: {error}")
    except PatientDataError as error:
        raise fail(str(error)) from None
    done = len(paths) - len(failures)
    console.print(f"wrote {done} of {len(paths)} patient(s) to {output}")
    if failures:
        console.print(f"[red]{len(failures)} patient(s) failed:[/red]")
        for failure in failures:
            console.print(f"  {escape(failure)}", soft_wrap=True)
        raise typer.Exit(1)



@app.command()
def phantom(
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to write the patient folder into.")],
    format: Annotated[PhantomFormat, typer.Option("--format", help="Patient folder format.")] = PhantomFormat.openkbp,
) -> None:
    """Write the embedded synthetic head-and-neck patient (with its reference dose) as OUTPUT/phantom."""
    output_folder(output)
    patient = make_phantom()
    (nifti.write_patient if format is PhantomFormat.nifti else openkbp_csv.write_patient)(patient, output / patient.id)
    console.print(f"wrote the phantom patient to {output / patient.id}")


@app.command()
def evaluate(
    reference: Annotated[Path, typer.Argument(help="Folder of reference patients with dose (OpenKBP CSV, NIfTI or pack).")],
    predictions: Annotated[Path, typer.Argument(help="Folder of predicted doses: <patient>.csv (OpenKBP submission) "
                                                "or <patient>.nii.gz.")],
    json_file: JsonFile = None,
    clinical: Annotated[bool, typer.Option("--clinical/--no-clinical", help="Also gamma, HI, Paddick CI, V95 % and the "
                                           "plan objectives.")] = True,
    gamma: GammaText = "3,2,10",
    objectives_file: ObjectivesFile = None,
) -> None:
    """Score predictions: OpenKBP dose and DVH scores, and (by default) the measures a physicist checks."""
    from dosepred.metrics.clinical import GammaCriteria, clinical_review, load_objectives, summarise_reviews
    from dosepred.metrics.folders import score_predictions

    reviews: dict[str, dict] = {}
    try:
        criteria = GammaCriteria(*numbers(gamma, 3, "--gamma"))
        objectives = load_objectives(objectives_file) if clinical else []

        def review(patient, dose) -> None:  # noqa: ANN001 - a Patient and its predicted dose
            reviews[patient.id] = clinical_review(patient, dose, objectives, criteria)

        with progress_bar() as progress:
            task = progress.add_task("evaluate", total=None)
            evaluation = score_predictions(reference, predictions, on_patient=review if clinical else None,
                                           progress=lambda done, total: progress.update(task, completed=done, total=total))
    except PatientDataError as error:
        raise fail(str(error)) from None
    table = Table(title="DVH metrics per ROI (mean over patients, Gy)")
    for column in ("ROI", "metric", "n", "reference", "predicted", "mean |error|"):
        table.add_column(column, justify="left" if column in ("ROI", "metric") else "right")
    for row in evaluation.roi_table():
        table.add_row(str(row["roi"]), str(row["metric"]), str(row["n"]), f"{row['reference_gy']:.2f}",
                      f"{row['predicted_gy']:.2f}", f"{row['mean_abs_error_gy']:.2f}")
    Console().print(table)
    summary = evaluation.summary()
    if clinical:
        summary["clinical"] = {"gamma_criteria": criteria.text, **summarise_reviews(reviews), "patients": reviews}
        _print_clinical(summary["clinical"])
    Console().print(f"patients: {evaluation.n}   dose score: {evaluation.dose_score:.4f} Gy   "
                    f"DVH score: {evaluation.dvh_score:.4f} Gy")
    if json_file is not None:
        write_json(json_file, summary)


def _print_clinical(clinical: dict) -> None:
    rates = clinical["gamma_pass_rate_percent"]
    if rates:
        Console().print(f"gamma pass rate ({clinical['gamma_criteria']}): mean {rates['mean']:.1f} % "
                        f"(patients {rates['min']:.1f}–{rates['max']:.1f} %)")
    table = Table(title="Targets (mean over patients): predicted / reference")
    for column in ("target", "HI", "Paddick CI", "V95%", "D95% (Gy)"):
        table.add_column(column, justify="left" if column == "target" else "right")
    for roi, measures in clinical["targets"].items():
        table.add_row(roi, *(" / ".join(f"{v:.3g}" for v in measures[m].values()) for m in ("HI", "Paddick CI", "V95%", "D95% (Gy)")))
    Console().print(table)
    table = Table(title="Plan objectives: patients meeting each")
    for column in ("objective", "patients", "predicted", "reference"):
        table.add_column(column, justify="left" if column == "objective" else "right")
    for objective, counts in clinical["objectives"].items():
        table.add_row(objective, str(counts["patients"]), str(counts["predicted met"]), str(counts["reference met"]))
    Console().print(table)
