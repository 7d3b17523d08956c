"""dosepred detect train | eval | embed: BLC zero-shot detection (supporting module)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from dosepred.cli.common import (ConfigFile, JsonFile, Overrides, Overwrite, Resume, RunFolder, Threads, app, console,
                                 fail, progress_bar, train_with_progress, write_json)
from dosepred.io.errors import PatientDataError

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
        raise fail(str(error)) from None


@detect_app.command("train")
def detect_train(output: RunFolder, config: ConfigFile = None, overrides: Overrides = None, resume: Resume = False,
                 overwrite: Overwrite = False, threads: Threads = None) -> None:
    """Train a detector on the seen structures (unseen ones are never targets, and their regions are ignored)."""
    from dosepred.detection.training import DetectorTrainer
    from dosepred.engine.config import DETECT_DEFAULTS

    trainer = train_with_progress(output, config, overrides, resume=resume, threads=threads, defaults=DETECT_DEFAULTS,
                                  label="training", build=lambda settings, progress: DetectorTrainer(
                                      settings, output, resume=resume, overwrite=overwrite, progress=progress))
    console.print(f"trained on {len(trainer.slices)} slices for {trainer.step} steps; model in {output / 'best'}")


@detect_app.command("eval")
def detect_eval(
    models: Annotated[list[Path], typer.Argument(help="Detector folders from 'detect train' (one table row each).")],
    data: Annotated[Path, typer.Option("--data", help="Evaluation patients.")] = Path("data/pack/validation"),
    slice_step: Annotated[int, typer.Option("--slice-step", min=1, help="Evaluate every n-th slice holding a structure.")] = 1,
    json_file: JsonFile = None,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="CPU threads [default: OMP_NUM_THREADS, "
                                                "else every core this process may use].")] = None,
) -> None:
    """ZSD (unseen classes: Recall@100 at IoU 0.4/0.5/0.6, mAP@0.5) and GZSD (seen/unseen recall, harmonic mean)."""
    from dosepred.detection.evaluation import RECALL_IOUS, evaluate_detector
    from dosepred.detection.training import load_detector
    from dosepred.devices import set_threads

    set_threads(threads)
    try:
        detectors = {str(folder): load_detector(folder) for folder in models}
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        raise fail(str(error)) from None
    results = {}
    with progress_bar() as progress:
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
        write_json(json_file, results)


@detect_app.command("embed")
def detect_embed(
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Where to write [default: the cache the "
                                                "detector reads].")] = None,
) -> None:
    """Recompute the class embeddings from the structures' names (MiniLM if installed, else the trigram fallback)."""
    from dosepred.detection.embeddings import CACHE, write_cache

    source = write_cache(output or CACHE)
    console.print(f"class embeddings from {source} written to {output or CACHE}")
