"""What every command shares: the app, the console (stderr), progress bars, failing with a message, and
signals. The CLI is the only place that prints, shows progress and configures logging."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

app = typer.Typer(help="3D radiotherapy dose prediction for head-and-neck patients (OpenKBP).", rich_markup_mode=None,
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
console = Console(stderr=True)


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show debug logging.")] = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False)])
    signal.signal(signal.SIGTERM, stop)


def stop(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl+C, so temporary folders and half-written files are removed on the way out."""
    raise SystemExit(128 + signum)


def progress_bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console)


def fail(message: str, code: int = 2) -> typer.Exit:
    console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)  # file names may hold [brackets]
    return typer.Exit(code)


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
