"""The ``dosepred`` command. The only place that prints, shows progress and configures logging."""

from __future__ import annotations

import json
import logging
import signal
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from dosepred.io import nifti, openkbp_csv, pack, sources
from dosepred.io.errors import PatientDataError
from dosepred.io.phantom import make_phantom
from dosepred.inference.writers import OutputFormat
from dosepred.metrics import OpenKBPScorer

app = typer.Typer(help="3D radiotherapy dose prediction for head-and-neck patients (OpenKBP).", rich_markup_mode=None,
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
console = Console(stderr=True)


class PrepareFormat(str, Enum):
    nifti = "nifti"
    pack = "pack"


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show debug logging.")] = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False)])
    signal.signal(signal.SIGTERM, _stop)


def _stop(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl+C, so temporary folders and half-written files are removed on the way out."""
    raise SystemExit(128 + signum)


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console)


def _fail(message: str, code: int = 2) -> typer.Exit:
    console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)  # file names may hold [brackets]
    return typer.Exit(code)


@app.command()
def prepare(
    source: Annotated[Path, typer.Argument(help="An OpenKBP split folder, a .tar.xz of one, or one patient folder.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to write the converted patients to.")],
    format: Annotated[PrepareFormat, typer.Option("--format", help="nifti: one folder of .nii.gz per patient; "
                                                  "pack: one compact file per patient.")] = PrepareFormat.nifti,
) -> None:
    """Convert patients to NIfTI folders or to the compact pack. Failing patients are listed at the end."""
    failures: list[str] = []
    try:
        with sources.open_patients(source) as paths, _progress() as progress:
            for path in progress.track(paths, description=f"prepare ({format.value})"):
                try:
                    patient = sources.read_patient(path)
                    if format is PrepareFormat.nifti:
                        nifti.write_patient(patient, output / patient.id)
                    else:
                        pack.write_patient(patient, output / f"{patient.id}{pack.SUFFIX}")
                except PatientDataError as error:
                    failures.append(str(error))
    except PatientDataError as error:
        raise _fail(str(error)) from None
    done = len(paths) - len(failures)
    console.print(f"wrote {done} of {len(paths)} patient(s) to {output}")
    if failures:
        console.print(f"[red]{len(failures)} patient(s) failed:[/red]")
        for failure in failures:
            console.print(f"  {escape(failure)}", soft_wrap=True)
        raise typer.Exit(1)


@app.command()
def train(
    output: Annotated[Path, typer.Option("--output", "-o", help="Run folder: config, metrics, checkpoints, best model.")],
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML or JSON config (see configs/).")] = None,
    overrides: Annotated[list[str] | None, typer.Argument(help="Config overrides such as optim.steps=500.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in OUTPUT from its last checkpoint.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the run already in OUTPUT.")] = False,
    genotype: Annotated[Path | None, typer.Option("--genotype", help="Train a searched architecture: a JSON file "
                                                  "with 'genotype' (and optionally 'channels').")] = None,
    init: Annotated[str | None, typer.Option("--init", help="Warm start from this model (name or folder) with a "
                                             "fresh schedule; its lineage carries into the new model card.")] = None,
    threads: Annotated[int | None, typer.Option("--threads", help="CPU threads [default: every core].")] = None,
) -> None:
    """Train a dose model; the best network by validation dose score is exported to OUTPUT/best."""
    from dosepred.devices import DeviceError
    from dosepred.engine.config import ConfigError, load_config
    from dosepred.engine.trainer import Trainer
    from dosepred.inference.predictor import ModelError

    try:
        if resume:
            if config is not None or overrides or genotype is not None or init is not None:
                raise ConfigError("--resume continues with the run's own config; give no --config, --genotype, "
                                  "--init or overrides")
            settings = load_config(output / "config.yaml")
        else:
            settings = load_config(config, overrides or [])
            if genotype is not None:
                settings["network"] = _searched_network(genotype, settings["network"])
            if init is not None:
                settings["init"] = init
        if threads is not None:
            settings["threads"] = threads
        trainer = Trainer(settings, output, resume=resume, overwrite=overwrite)
    except (ConfigError, PatientDataError, ModelError, DeviceError, OSError, KeyError, ValueError) as error:
        raise _fail(str(error)) from None
    total = settings["optim"]["steps"]
    with _progress() as progress:
        task = progress.add_task("train", total=total, completed=trainer.step)

        def on_step(step: int, row: dict[str, float]) -> None:
            if "val_dose_score" in row:
                progress.update(task, description=f"train (val dose {row['val_dose_score']:.2f} Gy)")
            progress.update(task, completed=step)

        trainer.fit(on_step)
    if trainer.topology.is_main:
        console.print(f"best validation dose score {trainer.best_dose_score:.4f} Gy; model in {output / 'best'}")


def _searched_network(path: Path, network: dict) -> dict:
    """The network section for a genotype file: {"genotype": {...}, "channels": [...]} (channels optional)."""
    from dosepred.engine.config import ConfigError

    try:
        content = json.loads(path.read_text())
        genotype = content["genotype"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise ConfigError(f"{path}: not a genotype file ({type(error).__name__}: {error})") from None
    channels = content.get("channels") or network.get("channels")
    return {"name": "searched", "genotype": genotype, **({"channels": channels} if channels else {})}


@app.command()
def distill(
    output: Annotated[Path, typer.Option("--output", "-o", help="Run folder, as for train.")],
    teachers: Annotated[list[str] | None, typer.Option("--teachers", "-t", help="A teacher model (name or folder); "
                                                       "repeat for each [default: the config's distill.teachers].")] = None,
    student: Annotated[str, typer.Option("--student", help="A registered network name (e.g. unet) or a "
                                         "genotype JSON file.")] = "unet",
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML or JSON config (train + distill).")] = None,
    overrides: Annotated[list[str] | None, typer.Argument(help="Overrides such as distill.adversarial_weight=0.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in OUTPUT from its last checkpoint.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the run already in OUTPUT.")] = False,
) -> None:
    """Distil the teachers' ensemble into a student with a dose and an uncertainty output (a trained critic)."""
    from dosepred.engine.config import DEFAULTS, ConfigError, load_config
    from dosepred.engine.distillation import DISTILL_DEFAULTS, DistillationTrainer
    from dosepred.inference.predictor import ModelError

    defaults = {**DEFAULTS, "distill": DISTILL_DEFAULTS}
    try:
        if resume:
            if teachers or config is not None or overrides:
                raise ConfigError("--resume continues with the run's own config; give no --teachers, --config or overrides")
            settings = load_config(output / "config.yaml", defaults=defaults)
        else:
            settings = load_config(config, overrides or [], defaults=defaults)
            settings["distill"]["teachers"] = list(teachers or settings["distill"]["teachers"])
            if not settings["distill"]["teachers"]:
                raise ConfigError("give the teachers: --teachers MODEL --teachers MODEL ... (or distill.teachers)")
            if Path(student).is_file():
                settings["network"] = _searched_network(Path(student), settings["network"])
            elif student != settings["network"]["name"]:
                settings["network"] = {"name": student}
        trainer = DistillationTrainer(settings, output, resume=resume, overwrite=overwrite)
    except (ConfigError, ModelError, PatientDataError, OSError, KeyError, ValueError) as error:
        raise _fail(str(error)) from None
    with _progress() as progress:
        task = progress.add_task("distill", total=settings["optim"]["steps"], completed=trainer.step)
        trainer.fit(lambda step, row: progress.update(task, completed=step))
    console.print(f"best validation dose score {trainer.best_dose_score:.4f} Gy; student in {output / 'best'}")


@app.command()
def search(
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Run folder for the search's results.")] = None,
    strategy: Annotated[str, typer.Option("--strategy", help="lenas, random, kshot, gold or fpnas (see the README).")] = "lenas",
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML or JSON search config.")] = None,
    overrides: Annotated[list[str] | None, typer.Argument(help="Config overrides such as search.supernet_steps=500.")] = None,
    space_size: Annotated[bool, typer.Option("--space-size", help="Print the search space and its size, then stop.")] = False,
) -> None:
    """Search architectures, rank them and choose strong, diverse teachers (ranked.json, teachers/, diversity.json)."""
    from dosepred.engine.config import SEARCH_DEFAULTS, ConfigError, load_config
    from dosepred.nas.run import run_search
    from dosepred.nas.space import SearchSpace

    try:
        settings = load_config(config, overrides or [], defaults=SEARCH_DEFAULTS)
    except ConfigError as error:
        raise _fail(str(error)) from None
    if space_size:
        Console().print(SearchSpace(tuple(settings["search"]["channels"])).describe())
        return
    if output is None:
        raise _fail("give --output for the search's results")
    with _progress() as progress:
        tasks: dict[str, object] = {}

        def report(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = progress.add_task(phase, total=total)
            progress.update(tasks[phase], completed=done)

        try:
            summary = run_search(settings, output, strategy=strategy, progress=report)
        except (KeyError, PatientDataError, ValueError) as error:
            raise _fail(str(error)) from None
    Console().print(summary, soft_wrap=True)


@app.command()
def predict(
    input: Annotated[Path, typer.Option("--input", "-i", help="One patient, or a folder of patients (OpenKBP CSV, "
                                        "NIfTI or pack), or a .tar.xz of them.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for one predicted dose per patient.")],
    model: Annotated[str | None, typer.Option("--model", "-m", help="A shipped model's name or a model folder "
                                              "[default: the best shipped model].")] = None,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda or auto.")] = "auto",
    tta: Annotated[bool, typer.Option("--tta/--no-tta", help="Average in the left-right mirrored prediction.")] = True,
    format: Annotated[OutputFormat, typer.Option("--format", help="openkbp-csv: pt_*.csv submission files; "
                                                 "nifti: pt_*.nii.gz.")] = OutputFormat.openkbp,
    resume: Annotated[bool, typer.Option("--continue", help="Skip patients whose output already exists.")] = False,
    threads: Annotated[int | None, typer.Option("--threads", help="CPU threads [default: every core].")] = None,
    fp32: Annotated[bool, typer.Option("--fp32", help="Compute in float32 even where bf16 is fast (bit-for-bit "
                                       "the numbers of model cards measured in float32).")] = False,
) -> None:
    """Predict the dose of each patient; failures are listed at the end and give exit code 1."""
    from dosepred.inference.batch import predict_patients
    from dosepred.inference.models import load_predictor
    from dosepred.devices import DeviceError, resolve_device, set_threads
    from dosepred.inference.predictor import ModelError

    set_threads(threads)
    try:
        predictor = load_predictor(model, device=resolve_device(device), amp=not fp32)
        with sources.open_patients(input) as paths, _progress() as progress:
            task = progress.add_task("predict", total=len(paths))
            report = predict_patients(predictor, paths, output, output_format=format, tta=tta, resume=resume,
                                      on_patient=lambda name: progress.advance(task))
    except (ModelError, DeviceError, PatientDataError) as error:
        raise _fail(str(error)) from None
    console.print(f"wrote {len(report.written)} prediction(s) to {output}"
                  + (f", skipped {len(report.skipped)} already done" if report.skipped else ""))
    if report.failed:
        console.print(f"[red]{len(report.failed)} patient(s) failed:[/red]")
        for name, message in report.failed.items():
            console.print(f"  {escape(name)}: {escape(message)}", soft_wrap=True)
        raise typer.Exit(1)


@app.command()
def demo(
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the demo's files.")] = Path("demo-output"),
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model name or folder [default: best shipped].")] = None,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda or auto.")] = "auto",
) -> None:
    """Predict the embedded phantom with the default model: dose (NIfTI), DVH plot (PNG), metrics table (CSV)."""
    from dosepred.inference.writers import write_dose
    from dosepred.devices import DeviceError, resolve_device
    from dosepred.inference.models import load_predictor, resolve_model
    from dosepred.inference.predictor import ModelError
    from dosepred.visual.dvh import metrics_rows, save_dvh_plot, write_metrics_csv

    try:
        model_dir = resolve_model(model)
        predictor = load_predictor(model, device=resolve_device(device))
    except (ModelError, DeviceError) as error:
        raise _fail(str(error)) from None
    if output.exists() and not output.is_dir():
        raise _fail(f"{output}: exists and is not a folder")
    with console.status(f"predicting the phantom with {model_dir.name}"):
        patient = make_phantom()
        dose = predictor.predict(patient, tta=True)
    output.mkdir(parents=True, exist_ok=True)
    files = {"predicted dose (NIfTI)": output / "phantom_dose.nii.gz", "DVH plot": output / "phantom_dvh.png",
             "metrics table": output / "phantom_metrics.csv"}
    write_dose(patient, dose, files["predicted dose (NIfTI)"], OutputFormat.nifti)
    save_dvh_plot(patient, dose, files["DVH plot"])
    rows, scores = metrics_rows(patient, dose)
    write_metrics_csv(rows, files["metrics table"])
    table = Table(title=f"phantom, model {model_dir.name} (Gy)")
    for column in rows[0]:
        table.add_column(column, justify="left" if column in ("roi", "metric") else "right")
    for row in rows:
        table.add_row(*(str(value) for value in row.values()))
    Console().print(table)
    Console().print(f"dose score {scores['dose_score']:.3f} Gy, DVH score {scores['dvh_score']:.3f} Gy "
                    "(against the phantom's synthetic reference dose)")
    for what, path in files.items():
        Console().print(f"{what}: {path}", soft_wrap=True)


@app.command("app")
def viewer(
    port: Annotated[int, typer.Option("--port", help="Port to serve on (127.0.0.1).")] = 8501,
    data_root: Annotated[Path | None, typer.Option("--data-root", help="Folder of patients the viewer may open; "
                                                   "nothing outside it is read.")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model name or folder [default: best shipped].")] = None,
) -> None:
    """Start the Streamlit viewer (needs the 'app' extra: pip install -e '.[app]')."""
    import importlib.util
    import os
    import sys

    if importlib.util.find_spec("streamlit") is None:
        raise _fail("the viewer needs Streamlit: pip install -e '.[app]'")
    if data_root is not None and not data_root.is_dir():
        raise _fail(f"{data_root}: not a folder")
    script = Path(__file__).resolve().parent / "app" / "main.py"
    command = [sys.executable, "-m", "streamlit", "run", str(script), "--server.address", "127.0.0.1",
               "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false"]
    environment = {k: v for k, v in os.environ.items() if k not in ("DOSEPRED_DATA_ROOT", "DOSEPRED_MODEL")}
    if data_root is not None:
        environment["DOSEPRED_DATA_ROOT"] = str(data_root.resolve())
    if model is not None:
        environment["DOSEPRED_MODEL"] = str(Path(model).resolve()) if Path(model).exists() else model
    console.print(f"dosepred viewer on http://127.0.0.1:{port} (Ctrl+C to stop)")
    os.execve(sys.executable, command, environment)  # Streamlit takes this process over: signals reach it directly


@app.command()
def phantom(
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to write the patient folder into.")],
    format: Annotated[OutputFormat, typer.Option("--format", help="Patient folder format.")] = OutputFormat.openkbp,
) -> None:
    """Write the embedded synthetic head-and-neck patient (with its reference dose) as OUTPUT/phantom."""
    patient = make_phantom()
    (nifti.write_patient if format is OutputFormat.nifti else openkbp_csv.write_patient)(patient, output / patient.id)
    console.print(f"wrote the phantom patient to {output / patient.id}")


@app.command()
def evaluate(
    reference: Annotated[Path, typer.Argument(help="Folder of reference patients with dose (OpenKBP CSV, NIfTI or pack).")],
    predictions: Annotated[Path, typer.Argument(help="Folder of predicted doses: <patient>.csv (OpenKBP submission) "
                                                "or <patient>.nii.gz.")],
    json_file: Annotated[Path | None, typer.Option("--json", help="Also write the scores to this JSON file.")] = None,
) -> None:
    """Score predictions with the OpenKBP dose and DVH scores."""
    if not predictions.is_dir():
        raise _fail(f"{predictions}: not a folder of predictions")
    scorer = OpenKBPScorer()
    try:
        with sources.open_patients(reference) as paths:
            ids = [path.name.removesuffix(pack.SUFFIX) for path in paths]
            missing = [pid for pid in ids if sources.find_dose_file(predictions, pid) is None]
            if missing:
                raise _fail(f"{predictions}: no prediction for {len(missing)} of {len(ids)} patient(s): "
                            f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}")
            with _progress() as progress:
                for path in progress.track(paths, description="evaluate"):
                    patient = sources.read_patient(path)
                    if patient.dose is None:
                        raise _fail(f"{path}: reference patient has no dose")
                    dose_file = sources.find_dose_file(predictions, patient.id)
                    if dose_file is None:
                        raise _fail(f"{path}: holds patient {patient.id!r}, whose prediction is not in {predictions} "
                                    "(a pack file's name must be its patient id)")
                    predicted = sources.read_dose_file(dose_file, patient.shape, patient.spacing)
                    scorer.add(patient.id, patient.dose, predicted, structures=patient.structure_stack(),
                               possible_dose_mask=patient.possible_dose_mask, voxel_volume_mm3=patient.voxel_volume_mm3)
    except PatientDataError as error:
        raise _fail(str(error)) from None
    evaluation = scorer.evaluation
    table = Table(title="DVH metrics per ROI (mean over patients, Gy)")
    for column in ("ROI", "metric", "n", "reference", "predicted", "mean |error|"):
        table.add_column(column, justify="left" if column in ("ROI", "metric") else "right")
    for row in evaluation.roi_table():
        table.add_row(str(row["roi"]), str(row["metric"]), str(row["n"]), f"{row['reference_gy']:.2f}",
                      f"{row['predicted_gy']:.2f}", f"{row['mean_abs_error_gy']:.2f}")
    Console().print(table)
    Console().print(f"patients: {evaluation.n}   dose score: {evaluation.dose_score:.4f} Gy   "
                    f"DVH score: {evaluation.dvh_score:.4f} Gy")
    if json_file is not None:
        json_file.parent.mkdir(parents=True, exist_ok=True)
        json_file.write_text(json.dumps(evaluation.summary(), indent=2) + "\n")


# --- zero-shot detection (supporting module): dosepred detect train | eval | embed ---------------------------

detect_app = typer.Typer(help="BLC zero-shot detection of the structures in axial CT slices (seen/unseen split "
                         "in the README).", no_args_is_help=True)
app.add_typer(detect_app, name="detect")


def _detection_slices(source: Path, slice_step: int, progress: Progress):
    from dosepred.detection.data import SliceSet

    task = progress.add_task(f"slices of {source}", total=None)
    try:
        return SliceSet.from_source(source, slice_step=slice_step,
                                    progress=lambda phase, done, total: progress.update(task, completed=done, total=total))
    except (PatientDataError, ValueError) as error:
        raise _fail(str(error)) from None


@detect_app.command("train")
def detect_train(
    output: Annotated[Path, typer.Option("--output", "-o", help="Model folder: model.safetensors, config.json, log.json.")],
    data: Annotated[Path, typer.Option("--data", help="Training patients (pack, CSV folders or tarball).")] = Path("data/pack/train"),
    steps: Annotated[int, typer.Option("--steps", help="Training steps (the shipped detector: 1200).")] = 1200,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Slices per step.")] = 8,
    learning_rate: Annotated[float, typer.Option("--lr", help="AdamW peak learning rate.")] = 1e-3,
    slice_step: Annotated[int, typer.Option("--slice-step", help="Keep every n-th slice holding a structure.")] = 2,
    blrpn: Annotated[bool, typer.Option("--blrpn/--no-blrpn", help="Learnt background embedding in the RPN "
                                        "(off: binary objectness and the fixed word 'background').")] = True,
    semantic_flow: Annotated[bool, typer.Option("--semantic-flow/--no-semantic-flow",
                                                help="Semantic information flow between cascade stages.")] = True,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    threads: Annotated[int | None, typer.Option("--threads", help="torch CPU threads [default: torch's].")] = None,
) -> None:
    """Train a detector on the seen structures (unseen ones are never targets, and their regions are ignored)."""
    import torch

    from dosepred.detection.network import DetectorConfig
    from dosepred.detection.training import save_detector, train_detector

    if steps < 1 or batch_size < 1 or slice_step < 1:
        raise _fail("--steps, --batch-size and --slice-step must be at least 1")
    if threads:
        torch.set_num_threads(threads)
    config = DetectorConfig(blrpn=blrpn, semantic_flow=semantic_flow)
    with _progress() as progress:
        slices = _detection_slices(data, slice_step, progress)
        task = progress.add_task("training", total=steps)
        try:
            detector, log = train_detector(slices, config, steps=steps, batch_size=batch_size, learning_rate=learning_rate,
                                           seed=seed, progress=lambda phase, done, total: progress.update(task, completed=done))
        except FloatingPointError as error:
            raise _fail(str(error), code=1) from None
    training = {"data": str(data), "slices": len(slices), "slice_step": slice_step, "steps": steps,
                "batch_size": batch_size, "learning_rate": learning_rate, "seed": seed,
                "threads": torch.get_num_threads(), "minutes": round(log[-1]["seconds"] / 60, 1)}
    save_detector(detector, output, training, log)
    console.print(f"trained on {len(slices)} slices for {steps} steps in {training['minutes']} min; model in {output}")


@detect_app.command("eval")
def detect_eval(
    models: Annotated[list[Path], typer.Argument(help="Detector folders from 'detect train' (one table row each).")],
    data: Annotated[Path, typer.Option("--data", help="Evaluation patients.")] = Path("data/pack/validation"),
    slice_step: Annotated[int, typer.Option("--slice-step", help="Evaluate every n-th slice holding a structure.")] = 1,
    json_file: Annotated[Path | None, typer.Option("--json", help="Also write every metric here.")] = None,
    threads: Annotated[int | None, typer.Option("--threads", help="torch CPU threads [default: torch's].")] = None,
) -> None:
    """ZSD (unseen classes: Recall@100 at IoU 0.4/0.5/0.6, mAP@0.5) and GZSD (seen/unseen recall, harmonic mean)."""
    import torch

    from dosepred.detection.evaluation import RECALL_IOUS, evaluate_detector
    from dosepred.detection.training import load_detector

    if threads:
        torch.set_num_threads(threads)
    try:
        detectors = {str(folder): load_detector(folder) for folder in models}
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        raise _fail(str(error)) from None
    results = {}
    with _progress() as progress:
        slices = _detection_slices(data, slice_step, progress)
        tasks: dict[str, object] = {}
        for name, detector in detectors.items():
            def report(phase: str, done: int, total: int, name: str = name) -> None:
                key = f"{Path(name).name}: {phase}"
                if key not in tasks:
                    tasks[key] = progress.add_task(key, total=total)
                progress.update(tasks[key], completed=done)

            results[name] = evaluate_detector(detector, slices, progress=report)
    table = Table(title=f"zero-shot detection, {data} (every {slice_step}. slice with a structure)")
    columns = [*(f"ZSD R@100 IoU{iou}" for iou in RECALL_IOUS), "ZSD mAP@0.5", "GZSD seen R", "GZSD unseen R", "GZSD HM"]
    for column in ("model", *columns):
        table.add_column(column, justify="left" if column == "model" else "right")
    for name, result in results.items():
        zsd, gzsd = result["zsd"], result["gzsd"]
        values = [*(zsd[f"recall@100_iou{iou}"] for iou in RECALL_IOUS), zsd["map@0.5"],
                  gzsd["seen_recall@100_iou0.5"], gzsd["unseen_recall@100_iou0.5"], gzsd["harmonic_mean"]]
        table.add_row(name, *(f"{100 * value:.1f}" for value in values))
    Console().print(table)
    if json_file is not None:
        json_file.parent.mkdir(parents=True, exist_ok=True)
        json_file.write_text(json.dumps(results, indent=2) + "\n")


@detect_app.command("embed")
def detect_embed(
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Where to write [default: the cache the "
                                                "detector reads].")] = None,
) -> None:
    """Recompute the class embeddings from the structures' names (MiniLM if installed, else the trigram fallback)."""
    from dosepred.detection.embeddings import CACHE, write_cache

    source = write_cache(output or CACHE)
    console.print(f"class embeddings from {source} written to {output or CACHE}")


# --- few-shot classification (supporting module): dosepred fewshot train | eval -------------------------------

fewshot_app = typer.Typer(help="Few-shot classification of CT patches (or digits): ProtoNet, + contrastive with "
                          "random views, + contrastive with learned views.", no_args_is_help=True)
app.add_typer(fewshot_app, name="fewshot")


class FewShotData(str, Enum):
    ct = "ct"
    digits = "digits"


def _fewshot_patches(data: FewShotData, patients: Path | None, *, novel: bool, size: int, slices: int):
    """The base (training) or novel (evaluation) patch set; clear errors for missing data or scikit-learn."""
    from dosepred.fewshot import data as fewshot_data

    if data is FewShotData.digits:
        if patients is not None:
            raise _fail("--patients applies to --data ct only")
        try:
            return fewshot_data.digits_patches(fewshot_data.DIGITS_NOVEL if novel else fewshot_data.DIGITS_BASE, size=size)
        except ImportError:
            raise _fail("the digits need scikit-learn: pip install -e '.[fewshot]'") from None
    default = Path("data/pack/validation" if novel else "data/pack/train")
    source = patients or default
    classes = fewshot_data.CT_NOVEL if novel else fewshot_data.CT_BASE
    try:
        with _progress() as progress:
            task = progress.add_task(f"patches ({source})", total=None)
            return fewshot_data.ct_patches(source, classes, size=size, slices=slices,
                                           progress=lambda phase, done, total: progress.update(task, completed=done,
                                                                                                total=total))
    except PatientDataError as error:
        hint = "" if patients else f" (build it with: dosepred prepare ../shared/openkbp/... -o {default} --format pack)"
        raise _fail(f"{error}{hint}") from None


@fewshot_app.command("train")
def fewshot_train(
    output: Annotated[Path, typer.Option("--output", "-o", help="Run folder: model.safetensors, config.json, log.json.")],
    method: Annotated[str, typer.Option("--method", help="protonet, random (contrastive, random views) or learned "
                                        "(contrastive, learned views).")] = "learned",
    data: Annotated[FewShotData, typer.Option("--data", help="ct: CT patches of the base structures; digits: "
                                              "scikit-learn digits 0-4.")] = FewShotData.ct,
    patients: Annotated[Path | None, typer.Option("--patients", help="Training patients for --data ct "
                                                  "[default: data/pack/train].")] = None,
    steps: Annotated[int, typer.Option("--steps", help="Training episodes.")] = 1000,
    ways: Annotated[int, typer.Option("--ways", help="Classes per training episode.")] = 5,
    shots: Annotated[int, typer.Option("--shots", help="Support images per class.")] = 5,
    queries: Annotated[int, typer.Option("--queries", help="Query images per class.")] = 10,
    contrastive_weight: Annotated[float, typer.Option("--contrastive-weight", help="Weight of the InfoNCE loss.")] = 0.5,
    inner_lr: Annotated[float, typer.Option("--inner-lr", help="Inner SGD step of the learned views' meta-loop.")] = 0.01,
    view_strength: Annotated[float, typer.Option("--view-strength", help="Scale every view bound (rotation 20°, "
                                                 "scale 1.2, shift 15%, gain 0.2, bias 0.1, noise 0.05).")] = 1.0,
    patch_size: Annotated[int, typer.Option("--patch-size", help="Patch side in voxels (pixels for digits).")] = 32,
    slices: Annotated[int, typer.Option("--slices", help="Axial slices per structure and patient.")] = 4,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    threads: Annotated[int | None, typer.Option("--threads", help="torch CPU threads [default: torch's].")] = None,
) -> None:
    """Meta-train an encoder on episodes of the base classes; the run folder is a model folder for 'fewshot eval'."""
    from dosepred.fewshot import data as fewshot_data
    from dosepred.fewshot.train import FewShotConfig, save_model, train as train_fewshot
    from dosepred.fewshot.views import ViewFamily

    if patch_size < 16 or patch_size % 16:
        raise _fail(f"--patch-size must be a multiple of 16 (the encoder halves it four times), got {patch_size}")
    try:
        config = FewShotConfig(method=method, steps=steps, ways=ways, shots=shots, queries=queries,
                               contrastive_weight=contrastive_weight, inner_lr=inner_lr, seed=seed,
                               views=ViewFamily().scaled(view_strength))
    except ValueError as error:
        raise _fail(str(error)) from None
    if steps < 1 or view_strength < 0:
        raise _fail(f"--steps must be at least 1 and --view-strength at least 0, got {steps} and {view_strength}")
    if threads:
        import torch

        torch.set_num_threads(threads)
    patches = _fewshot_patches(data, patients, novel=False, size=patch_size, slices=slices)
    with _progress() as progress:
        task = progress.add_task(f"train ({method})", total=steps)
        try:
            result = train_fewshot(patches, config, lambda phase, done, total: progress.update(task, completed=done))
        except ValueError as error:
            raise _fail(str(error)) from None
    described = {"dataset": data.value, "classes": list(patches.classes), "patches": patches.counts(),
                 "patch_size": patch_size}
    if data is FewShotData.ct:
        described.update(patients=str(patients or "data/pack/train"), slices=slices,
                         hu_window=list(fewshot_data.HU_WINDOW))
    save_model(result, config, output, data=described)
    last = result.log[-1]
    console.print(f"{method}: {steps} episodes in {result.seconds / 60:.1f} min, last training accuracy "
                  f"{100 * last['accuracy']:.1f}%; model in {output}")


@fewshot_app.command("eval")
def fewshot_eval(
    models: Annotated[list[Path], typer.Argument(help="Model folders from 'fewshot train' (one table row each).")],
    data: Annotated[FewShotData, typer.Option("--data", help="ct: the novel structures' patches; digits: 5-9.")] = FewShotData.ct,
    patients: Annotated[Path | None, typer.Option("--patients", help="Patients for --data ct "
                                                  "[default: data/pack/validation].")] = None,
    ways: Annotated[int, typer.Option("--ways", help="Classes per episode.")] = 5,
    shots: Annotated[list[int] | None, typer.Option("--shots", help="Support images per class; repeat "
                                                    "[default: 1 and 5].")] = None,
    queries: Annotated[int, typer.Option("--queries", help="Query images per class.")] = 15,
    episodes: Annotated[int, typer.Option("--episodes", help="Episodes per setting.")] = 600,
    seed: Annotated[int, typer.Option("--seed", help="Episode seed (the same episodes for every model).")] = 0,
    json_file: Annotated[Path | None, typer.Option("--json", help="Also write the table to this JSON file.")] = None,
) -> None:
    """N-way K-shot accuracy (mean ± 95% CI over the episodes) of each model on the novel classes."""
    from dosepred.fewshot.evaluate import evaluate as evaluate_fewshot
    from dosepred.fewshot.train import load_encoder

    shots = shots or [1, 5]
    if ways < 2 or min(shots) < 1 or queries < 1 or episodes < 2:
        raise _fail(f"need --ways >= 2, --shots >= 1, --queries >= 1, --episodes >= 2 "
                    f"(got {ways}, {shots}, {queries}, {episodes})")
    try:
        loaded = [(folder, *load_encoder(folder)) for folder in models]
    except (FileNotFoundError, KeyError, RuntimeError, ValueError) as error:
        raise _fail(str(error)) from None
    cache: dict[tuple[int, int], object] = {}
    rows: list[dict] = []
    for folder, encoder, config in loaded:
        described = config["data"]
        if described["dataset"] != data.value:
            raise _fail(f"{folder} was trained on {described['dataset']}, not {data.value} (give --data)")
        key = (described["patch_size"], described.get("slices", 0))
        if key not in cache:
            cache[key] = _fewshot_patches(data, patients, novel=True, size=key[0], slices=key[1] or 1)
        patches = cache[key]
        row = {"model": str(folder), "method": config["train"]["method"],
               "training_seconds": config.get("training_seconds"), "steps": config["train"]["steps"]}
        with _progress() as progress:
            tasks: dict[str, object] = {}

            def report(phase: str, done: int, total: int) -> None:
                if phase not in tasks:
                    tasks[phase] = progress.add_task(f"{folder.name}: {phase}", total=total)
                progress.update(tasks[phase], completed=done)

            try:
                for k in shots:
                    row[f"{ways}-way {k}-shot"] = evaluate_fewshot(encoder, patches, ways=ways, shots=k, queries=queries,
                                                                   episodes=episodes, seed=seed, progress=report)
            except ValueError as error:
                raise _fail(str(error)) from None
        rows.append(row)
    settings = [f"{ways}-way {k}-shot" for k in shots]
    table = Table(title=f"few-shot accuracy (%) ± 95% CI, {episodes} episodes, {queries} queries/class, "
                        f"{data.value} novel classes ({', '.join(patches.classes)}), seed {seed}")
    for column in ("model", "method", "steps", "train min", *settings):
        table.add_column(column, justify="left" if column in ("model", "method") else "right")
    for row in rows:
        minutes = f"{row['training_seconds'] / 60:.1f}" if row["training_seconds"] is not None else "?"
        table.add_row(Path(row["model"]).name, row["method"], str(row["steps"]), minutes,
                      *(str(row[s]) for s in settings))
    Console().print(table)
    if json_file is not None:
        json_file.parent.mkdir(parents=True, exist_ok=True)
        content = {"data": data.value, "classes": list(patches.classes), "episodes": episodes, "queries": queries,
                   "seed": seed, "rows": [{k: (vars(v) if hasattr(v, "ci95") else v) for k, v in row.items()}
                                          for row in rows]}
        json_file.write_text(json.dumps(content, indent=2) + "\n")


if __name__ == "__main__":  # torchrun -m dosepred.cli train ...
    app()
