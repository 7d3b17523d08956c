"""What every command shares: the app, the console (stderr), progress bars, failing with a message, and
signals. The CLI is the only place that prints, shows progress and configures logging."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

from dosepred.io.files import atomic_file
from dosepred.progress import Progress as PhaseProgress  # rich's Progress draws it

if TYPE_CHECKING:
    from dosepred.engine.loop import TrainingLoop

app = typer.Typer(help="3D radiotherapy dose prediction for head-and-neck patients (OpenKBP).", rich_markup_mode=None,
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
console = Console(stderr=True)

# The options every training command shares (train, distill, detect train, fewshot train).
RunFolder = Annotated[Path, typer.Option("--output", "-o", help="Run folder: config, metrics, checkpoints; the "
                                         "model in OUTPUT/best.")]
ConfigFile = Annotated[Path | None, typer.Option("--config", "-c", help="YAML or JSON config (see configs/).")]
Overrides = Annotated[list[str] | None, typer.Argument(help="Config overrides such as optim.steps=500.")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue the run in OUTPUT from its last checkpoint.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace the run already in OUTPUT.")]
Threads = Annotated[int | None, typer.Option("--threads", min=1, help="CPU threads [default: the config's "
                                             "threads, else OMP_NUM_THREADS, else every core this process may use].")]
Init = Annotated[str | None, typer.Option("--init", help="Warm start from this model (name or folder) with a "
                                      "fresh schedule; its lineage carries into the new model card.")]
ModelName = Annotated[str | None, typer.Option("--model", "-m", help="A shipped model's name or a model folder "
                                               "[default: the best shipped model].")]
Device = Annotated[str, typer.Option("--device", help="cpu, cuda or auto.")]
Tta = Annotated[bool, typer.Option("--tta/--no-tta", help="Average in the left-right mirrored prediction.")]
ObjectivesFile = Annotated[Path | None, typer.Option("--objectives", help="Plan objectives (YAML) [default: the shipped "
                                                     "head-and-neck set].", show_default=False)]
GammaText = Annotated[str, typer.Option("--gamma", help="Gamma criteria DOSE%,DTA_MM,THRESHOLD% (global; TG-218: "
                                        "3,2,10), against a reference dose.")]


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show debug logging.")] = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False)])
    signal.signal(signal.SIGTERM, stop)


def stop(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl+C, so temporary folders and half-written files are removed on the way out."""
    raise SystemExit(128 + signum)


class LoggedProgress(Progress):
    """Rich's bars on a terminal. Elsewhere (a log file under nohup, a pipe) rich would draw the bars only once,
    at the end, so there each task gets plain lines instead: when it starts, at most every ``interval`` seconds,
    and when it completes."""

    def __init__(self, *columns: Any, interval: float = 60.0, **settings: Any) -> None:
        super().__init__(*columns, **settings)
        self.disable = not self.console.is_terminal  # the plain lines say it all: no bar drawn once at the end
        self.interval = interval
        self.logged: dict[TaskID, float] = {}  # when each task's last line was printed

    def update(self, task_id: TaskID, **changes: Any) -> None:
        super().update(task_id, **changes)
        self.report(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self.report(task_id)

    def report(self, task_id: TaskID) -> None:
        if self.console.is_terminal or task_id not in self._tasks:
            return
        task, now = self._tasks[task_id], time.monotonic()
        last = self.logged.get(task_id)
        if last == float("inf") or (last is not None and now - last < self.interval and not task.finished):
            return
        total = "" if task.total is None else f"/{task.total:g}"
        self.console.print(f"{task.description}: {task.completed:g}{total} ({task.elapsed or 0:.0f} s)",
                           markup=False, highlight=False)
        self.logged[task_id] = float("inf") if task.finished else now


def progress_bar() -> Progress:
    return LoggedProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          TimeRemainingColumn(), console=console)


def fail(message: str, code: int = 2) -> typer.Exit:
    console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)  # file names may hold [brackets]
    return typer.Exit(code)


def output_folder(path: Path) -> Path:
    """Check, before any work starts, that the output folder can be written (it is made with its first file)."""
    why = _unwritable(path)
    if why:
        raise fail(f"cannot write into {path}: {why}")
    return path


def output_file(path: Path) -> Path:
    """Check, before any work starts, that an output file can be written."""
    why = "it is a folder" if path.is_dir() else _unwritable(path.parent)
    if why:
        raise fail(f"cannot write {path}: {why}")
    return path


def _unwritable(folder: Path) -> str | None:
    """Why ``folder`` cannot be written or made, or None."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        if existing.is_symlink():
            return f"{existing} is a link to nothing"
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"no permission to write into {existing}"
    return None


def _checked_json(path: Path | None) -> Path | None:
    return None if path is None else output_file(path)


# A command's --json file, its place checked when the command line is read (before any work).
JsonFile = Annotated[Path | None, typer.Option("--json", help="Also write the results to this JSON file.",
                                               callback=_checked_json)]


def write_json(path: Path, content: object) -> None:
    """Write a command's --json file whole: strict JSON (a NaN or infinity, e.g. HI of an all-zero dose, becomes
    null, which every JSON reader takes), or fail with a message."""

    def strict(value: object) -> object:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {key: strict(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [strict(item) for item in value]
        return value

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as tmp:
            tmp.write_text(json.dumps(strict(content), indent=2, allow_nan=False) + "\n")
    except OSError as error:
        raise fail(f"{path}: cannot write ({error.strerror or type(error).__name__})") from None


def run_settings(output: Path, config: Path | None, overrides: list[str] | None, *, resume: bool,
                 defaults: dict[str, Any]) -> dict[str, Any]:
    """A training command's settings: the run's own config.yaml when resuming, else ``defaults`` updated by
    the config file and the ``key.sub=value`` overrides. Raises ConfigError."""
    from dosepred.engine.config import ConfigError, load_config

    if resume:
        if config is not None or overrides:
            raise ConfigError("--resume continues with the run's own config; give no --config or overrides")
        return load_config(output / "config.yaml", defaults=defaults)
    return load_config(config, overrides or [], defaults=defaults)


def train_with_progress(output: Path, config: Path | None, overrides: list[str] | None, *, resume: bool,
                        threads: int | None, defaults: dict[str, Any], label: str,
                        build: Callable[[dict[str, Any], PhaseProgress], TrainingLoop]) -> TrainingLoop:
    """Load a training command's settings, ``build(settings, data_progress)`` its trainer and fit it, with
    progress bars for the data and the steps; every expected failure becomes a message."""
    from dosepred.devices import DeviceError
    from dosepred.engine.config import ConfigError
    from dosepred.io.errors import PatientDataError
    from dosepred.models import ModelError

    with progress_bar() as progress:
        loading = progress.add_task("data", total=None)  # a distillation's teacher passes take minutes
        try:
            settings = run_settings(output, config, overrides, resume=resume, defaults=defaults)
            if threads is not None:
                settings["threads"] = threads
            trainer = build(settings, lambda phase, done, total: progress.update(
                loading, description=phase, completed=done, total=total))
        except (ConfigError, PatientDataError, ModelError, DeviceError, OSError, KeyError, ValueError) as error:
            raise fail(str(error)) from None
        task = progress.add_task(label, total=settings["optim"]["steps"], completed=trainer.step)

        def on_step(step: int, row: dict[str, float]) -> None:
            if "val_dose_score" in row:
                progress.update(task, description=f"{label} (val dose {row['val_dose_score']:.2f} Gy)")
            progress.update(task, completed=step)

        try:
            trainer.fit(on_step)
        except FloatingPointError as error:
            raise fail(str(error), code=1) from None
        finally:
            trainer.close()
    return trainer


def numbers(text: str, count: int, flag: str) -> list[float]:
    """Comma-separated positive numbers, ``count`` of them, or a usage error naming ``flag``."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        values = []
    if len(values) != count or not all(v > 0 for v in values):
        raise fail(f"{flag} {text}: expected {count} positive numbers separated by commas, e.g. 3,2,10")
    return values
