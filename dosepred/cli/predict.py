"""dosepred predict | demo | app: predictions for patients, the phantom demo and the viewer."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dosepred.cli.common import (Device, GammaText, ModelName, ObjectivesFile, Tta, app, console, fail, numbers,
                                 output_file, output_folder, progress_bar)
from dosepred.inference.writers import OutputFormat
from dosepred.io import sources
from dosepred.io.errors import PatientDataError
from dosepred.io.phantom import make_phantom
from dosepred.io.roi_names import RoiNames

RoiNamesFile = Annotated[Path | None, typer.Option("--roi-names", help="ROI name table (YAML) for DICOM patients "
                                                   "[default: the shipped dosepred/io/roi_names.yaml].",
                                                   show_default=False)]
Ptv = Annotated[list[str] | None, typer.Option("--ptv", help="NAME=GY: a DICOM target whose name does not carry its "
                                               "prescription, e.g. --ptv PTV_High=70 (repeatable).", show_default=False)]


@app.command()
def predict(
    input: Annotated[Path, typer.Option("--input", "-i", help="One patient, or a folder of patients (OpenKBP CSV, "
                                        "NIfTI, pack, or DICOM: a CT series and its RTSTRUCT), or a .zip or tar "
                                        "archive (.tar, .tar.gz, .tgz, .tar.xz, .tar.bz2) of them.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for one predicted dose per patient.")],
    model: ModelName = None,
    device: Device = "auto",
    tta: Tta = True,
    format: Annotated[OutputFormat | None, typer.Option("--format", help="openkbp-csv: <id>.csv submission files; "
                                                        "nifti: <id>.nii.gz; rtdose: <id>.dcm (DICOM RT Dose; DICOM "
                                                        "patients: on their CT) [default: rtdose for DICOM patients, "
                                                        "openkbp-csv for the others].", show_default=False)] = None,
    roi_names: RoiNamesFile = None,
    ptv: Ptv = None,
    resume: Annotated[bool, typer.Option("--continue", help="Skip patients whose output already exists.")] = False,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="CPU threads [default: OMP_NUM_THREADS, "
                                                "else every core this process may use].")] = None,
    fp32: Annotated[bool, typer.Option("--fp32", help="Compute in float32 even where bf16 is fast (bit-for-bit "
                                       "the numbers of model cards measured in float32).")] = False,
) -> None:
    """Predict the dose of each patient; failures are listed at the end and give exit code 1."""
    from dosepred.inference.batch import predict_patients
    from dosepred.inference.loader import load_predictor
    from dosepred.devices import DeviceError, resolve_device, set_threads
    from dosepred.models import ModelError, resolve_model

    set_threads(threads)
    output_folder(output)
    try:
        names = RoiNames.load(roi_names, prescriptions=_prescriptions(ptv or []))
        predictor = load_predictor(model, device=resolve_device(device), amp=not fp32)
        folder = resolve_model(model)  # a shipped model by its name, a model folder by its last two parts
        made_by = "/".join(folder.parts[-2:]) if model is not None and Path(model).exists() else folder.name
        console.print(f"model {made_by} on {describe(predictor)}", markup=False, highlight=False)
        with sources.open_patients(input) as paths, progress_bar() as progress:
            task = progress.add_task("predict", total=len(paths))
            report = predict_patients(predictor, paths, output, output_format=format, tta=tta, resume=resume,
                                      roi_names=names, model=made_by, on_patient=lambda name: progress.advance(task))
    except (ModelError, DeviceError, PatientDataError) as error:
        raise fail(str(error)) from None
    for messages in report.warnings.values():
        for message in messages:
            console.print(f"[yellow]warning[/yellow] {escape(message)}", soft_wrap=True)
    console.print(f"wrote {len(report.written)} prediction(s) to {output}"
                  + (f", skipped {len(report.skipped)} already done" if report.skipped else ""))
    if report.failed:
        console.print(f"[red]{len(report.failed)} patient(s) failed:[/red]")
        for name, message in report.failed.items():
            console.print(f"  {escape(name)}: {escape(message)}", soft_wrap=True)
        raise typer.Exit(1)


def describe(predictor) -> str:  # noqa: ANN001 - a Predictor or an EnsemblePredictor
    """Where and how a model computes: device, precision, threads."""
    import torch

    members = getattr(predictor, "members", [predictor])
    device = members[0].device
    precision = "bf16" if all(member.amp for member in members) else "fp32"
    count = torch.get_num_threads()
    threads = f", {count} thread{'s' if count > 1 else ''}" if device.type == "cpu" else ""
    return f"{device.type} ({precision}{threads})"


def _prescriptions(pairs: list[str]) -> dict[str, float]:
    """--ptv NAME=GY pairs -> {NAME: GY}."""
    prescriptions = {}
    for pair in pairs:
        name, _, gy = pair.rpartition("=")
        try:
            value = float(gy)
        except ValueError:
            value = 0.0
        if not name.strip() or not value > 0:
            raise fail(f"--ptv {pair}: expected NAME=GY with a positive prescription in Gy, e.g. PTV_High=70")
        prescriptions[name.strip()] = value
    return prescriptions


@app.command()
def report(
    input: Annotated[Path, typer.Option("--input", "-i", help="One patient (any format predict reads).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The report: an .html file.")],
    model: ModelName = None,
    device: Device = "auto",
    tta: Tta = True,
    objectives_file: ObjectivesFile = None,
    gamma: GammaText = "3,2,10",
    roi_names: RoiNamesFile = None,
    ptv: Ptv = None,
) -> None:
    """Predict one patient and write a self-contained HTML review: objectives, gamma, DVH, key slices."""
    import warnings

    from dosepred.devices import DeviceError, resolve_device
    from dosepred.inference.loader import load_predictor
    from dosepred.io.patient import require_grid
    from dosepred.io.roi_names import UnmappedRoiWarning
    from dosepred.metrics.clinical import GammaCriteria, load_objectives
    from dosepred.models import ModelError, resolve_model
    from dosepred.visual.report import write_report

    if output.suffix.lower() not in (".html", ".htm"):
        raise fail(f"{output}: the report is an HTML file (name it *.html)")
    output_file(output)
    try:
        criteria = GammaCriteria(*numbers(gamma, 3, "--gamma"))
        objectives = load_objectives(objectives_file)
        names = RoiNames.load(roi_names, prescriptions=_prescriptions(ptv or []))
        predictor = load_predictor(model, device=resolve_device(device))
        with sources.open_patients(input) as paths:
            if len(paths) != 1:
                raise PatientDataError(input, f"holds {len(paths)} patients; a report is for one")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", UnmappedRoiWarning)
                patient = sources.read_patient(paths[0], names)
            for warning in caught:
                console.print(f"[yellow]warning[/yellow] {escape(str(warning.message))}", soft_wrap=True)
            require_grid(patient)
            with console.status("predicting and measuring"):
                write_report(patient, predictor.predict(patient, tta=tta), output, model=resolve_model(model).name,
                             objectives=objectives, gamma=criteria)
    except (ModelError, DeviceError, PatientDataError) as error:
        raise fail(str(error)) from None
    console.print(f"wrote {output}")


@app.command()
def demo(
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the demo's files.")] = Path("demo-output"),
    model: ModelName = None,
    device: Device = "auto",
) -> None:
    """Predict the embedded phantom with the default model: dose (NIfTI), DVH plot (PNG), metrics table (CSV)."""
    from dosepred.inference.writers import write_dose
    from dosepred.devices import DeviceError, resolve_device
    from dosepred.inference.loader import load_predictor
    from dosepred.models import ModelError, resolve_model
    from dosepred.visual.dvh import metrics_rows, save_dvh_plot, write_metrics_csv

    output_folder(output)
    try:
        model_dir = resolve_model(model)
        predictor = load_predictor(model, device=resolve_device(device))
    except (ModelError, DeviceError) as error:
        raise fail(str(error)) from None
    with console.status(f"predicting the phantom with {model_dir.name}"):
        patient = make_phantom()
        dose = predictor.predict(patient, tta=True)
    output.mkdir(parents=True, exist_ok=True)
    files = {"predicted dose (NIfTI)": output / "phantom_dose.nii.gz", "DVH plot": output / "phantom_dvh.png",
             "metrics table": output / "phantom_metrics.csv"}
    write_dose(patient, dose, files["predicted dose (NIfTI)"], OutputFormat.nifti, model=model_dir.name)
    save_dvh_plot(patient, dose, files["DVH plot"])
    rows, scores = metrics_rows(patient, dose)
    write_metrics_csv(rows, files["metrics table"])
    table = Table(title=f"phantom, model {model_dir.name} (Gy)")
    for column in rows[0]:
        table.add_column(column, justify="left" if column in ("roi", "metric") else "right")
    for row in rows:
        table.add_row(*(str(value) for value in row.values()))
    Console().print(table)
    Console().print(f"dose score {scores['dose_score']:.3f} Gy, DVH score {scores['dvh_score']:.3f} Gy against the "
                    "phantom's made-up reference dose: a check of the install, not of the model (its validation "
                    "scores are in its model card)")
    for what, path in files.items():
        Console().print(f"{what}: {path}", soft_wrap=True)


@app.command("app")
def viewer(
    port: Annotated[int, typer.Option("--port", help="Port to serve on (127.0.0.1).")] = 8501,
    data_root: Annotated[Path | None, typer.Option("--data-root", help="Folder of patients the viewer may open; "
                                                   "nothing outside it is read.")] = None,
    model: ModelName = None,
    roi_names: RoiNamesFile = None,
    ptv: Ptv = None,
) -> None:
    """Start the Streamlit viewer (needs the 'app' extra: pip install -e '.[app]')."""
    import importlib.util
    import json
    import os
    import sys

    if importlib.util.find_spec("streamlit") is None:
        raise fail("the viewer needs Streamlit: pip install -e '.[app]'")
    if data_root is not None and not data_root.is_dir():
        raise fail(f"{data_root}: not a folder")
    prescriptions = _prescriptions(ptv or [])
    try:
        RoiNames.load(roi_names, prescriptions=prescriptions)  # refused here, not on the viewer's first patient
    except PatientDataError as error:
        raise fail(str(error)) from None
    script = Path(__file__).resolve().parents[1] / "app" / "main.py"
    command = [sys.executable, "-m", "streamlit", "run", str(script), "--server.address", "127.0.0.1",
               "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
               "--client.toolbarMode", "minimal"]  # no "Deploy" menu: this is a local viewer
    settings = ("DOSEPRED_DATA_ROOT", "DOSEPRED_MODEL", "DOSEPRED_ROI_NAMES", "DOSEPRED_PTV")
    environment = {k: v for k, v in os.environ.items() if k not in settings}
    if data_root is not None:
        environment["DOSEPRED_DATA_ROOT"] = str(data_root.resolve())
    if model is not None:
        environment["DOSEPRED_MODEL"] = str(Path(model).resolve()) if Path(model).exists() else model
    if roi_names is not None:
        environment["DOSEPRED_ROI_NAMES"] = str(roi_names.resolve())
    if prescriptions:
        environment["DOSEPRED_PTV"] = json.dumps(prescriptions)
    console.print(f"dosepred viewer on http://127.0.0.1:{port} (Ctrl+C to stop)")
    os.execve(sys.executable, command, environment)  # Streamlit takes this process over: signals reach it directly
