"""dosepred train | distill | search: dose models, students and architecture searches."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from dosepred.cli.common import (ConfigFile, Init, Overrides, Overwrite, PhaseProgress, Resume, RunFolder, Threads,
                                 app, console, fail, progress_bar, run_settings, train_with_progress)
from dosepred.io.errors import PatientDataError

@app.command()
def train(
    output: RunFolder,
    config: ConfigFile = None,
    overrides: Overrides = None,
    resume: Resume = False,
    overwrite: Overwrite = False,
    genotype: Annotated[Path | None, typer.Option("--genotype", help="Train a searched architecture: a JSON file "
                                                  "with 'genotype' (and optionally 'channels', 'stem_stride').")] = None,
    init: Init = None,
    threads: Threads = None,
) -> None:
    """Train a dose model; the best network by validation dose score is exported to OUTPUT/best."""
    from dosepred.engine.config import DEFAULTS
    from dosepred.engine.trainer import Trainer

    if resume and (genotype is not None or init is not None):
        raise fail("--resume continues with the run's own config; give no --genotype or --init")

    def build(settings: dict[str, Any], report: PhaseProgress) -> Trainer:
        if genotype is not None:
            settings["network"] = _searched_network(genotype, settings["network"])
        if init is not None:
            settings["init"] = init
        return Trainer(settings, output, resume=resume, overwrite=overwrite, progress=report)

    trainer = train_with_progress(output, config, overrides, resume=resume, threads=threads, defaults=DEFAULTS,
                                  label="train", build=build)
    if trainer.topology.is_main:
        console.print(f"best validation dose score {trainer.best_score:.4f} Gy; model in {output / 'best'}")


def _searched_network(path: Path, network: dict) -> dict:
    """The network section for a genotype file: {"genotype": {...}, "channels": [...], "stem_stride": 2} (channels
    and stem_stride optional)."""
    from dosepred.engine.config import ConfigError

    try:
        content = json.loads(path.read_text())
        genotype = content["genotype"]
        if not isinstance(genotype, dict):
            raise TypeError("'genotype' must be a mapping of encoder and decoder blocks")
    except (OSError, ValueError, RecursionError, KeyError, TypeError) as error:  # ValueError: JSON's
        raise ConfigError(f"{path}: not a genotype file ({type(error).__name__}: {str(error)[:200]})") from None
    channels = content.get("channels") or network.get("channels")
    return {"name": "searched", "genotype": genotype, **({"channels": channels} if channels else {}),
            **({"stem_stride": content["stem_stride"]} if "stem_stride" in content else {})}


@app.command()
def distill(
    output: RunFolder,
    teachers: Annotated[list[str] | None, typer.Option("--teachers", "-t", help="A teacher model (name or folder); "
                                                       "repeat for each [default: the config's distill.teachers].")] = None,
    student: Annotated[str | None, typer.Option("--student", help="A registered network name (e.g. unet) or a "
                                                "genotype JSON file [default: the config's network].")] = None,
    config: ConfigFile = None,
    overrides: Annotated[list[str] | None, typer.Argument(help="Overrides such as distill.adversarial_weight=0.")] = None,
    resume: Resume = False,
    overwrite: Overwrite = False,
    init: Init = None,
    threads: Threads = None,
) -> None:
    """Distil the teachers' ensemble into a student with a dose and an uncertainty output (a trained critic)."""
    from dosepred.engine.config import DISTILL_DEFAULTS, ConfigError
    from dosepred.engine.distillation import DistillationTrainer

    if resume and (teachers or student is not None or init is not None):
        raise fail("--resume continues with the run's own config; give no --teachers, --student or --init")

    def build(settings: dict[str, Any], report: PhaseProgress) -> DistillationTrainer:
        if not resume:
            settings["distill"]["teachers"] = list(teachers or settings["distill"]["teachers"])
            if not settings["distill"]["teachers"]:
                raise ConfigError("give the teachers: --teachers MODEL --teachers MODEL ... (or distill.teachers)")
            if student is not None and Path(student).is_file():
                settings["network"] = _searched_network(Path(student), settings["network"])
            elif student is not None and student != settings["network"]["name"]:
                settings["network"] = {"name": student}
            if init is not None:
                settings["init"] = init
        return DistillationTrainer(settings, output, resume=resume, overwrite=overwrite, progress=report)

    trainer = train_with_progress(output, config, overrides, resume=resume, threads=threads, defaults=DISTILL_DEFAULTS,
                                  label="distill", build=build)
    if trainer.topology.is_main:
        console.print(f"best validation dose score {trainer.best_score:.4f} Gy; student in {output / 'best'}")


@app.command()
def search(
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Run folder for the search's results.")] = None,
    strategy: Annotated[str | None, typer.Option("--strategy", help="lenas, random, kshot, gold or fpnas (see the "
                                                 "README) [default: the config's search.strategy, lenas].")] = None,
    config: ConfigFile = None,
    overrides: Annotated[list[str] | None, typer.Argument(help="Config overrides such as search.supernet_steps=500.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the search in OUTPUT (its supernet from the last "
                                         "checkpoint).")] = False,
    overwrite: Overwrite = False,
    space_size: Annotated[bool, typer.Option("--space-size", help="Print the search space and its size, then stop.")] = False,
) -> None:
    """Search architectures, rank them and choose strong, diverse teachers (ranked.json, teachers/, diversity.json)."""
    from dosepred.engine.config import SEARCH_DEFAULTS, ConfigError
    from dosepred.nas.run import run_search
    from dosepred.nas.space import SearchSpace
    from dosepred.nas.strategies import check_strategy

    if output is None and not space_size:
        raise fail("give --output for the search's results")
    try:
        if strategy is not None:  # --space-size too: a typo is no other space
            check_strategy(strategy)
    except ValueError as error:
        raise fail(str(error)) from None
    try:
        chosen = [f"search.strategy={strategy}"] if strategy and not resume else []
        settings = run_settings(output or Path(), config, [*(overrides or []), *chosen], resume=resume,
                                defaults=SEARCH_DEFAULTS)
        if resume and strategy and strategy != settings["search"]["strategy"]:
            raise ConfigError(f"{output} holds a {settings['search']['strategy']} search: --resume continues it "
                              "(give no --strategy, or the same one)")
    except ConfigError as error:
        raise fail(str(error)) from None
    if space_size:
        Console().print(SearchSpace.from_config(settings).describe())
        return
    with progress_bar() as progress:
        tasks: dict[str, object] = {}

        def report(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = progress.add_task(phase, total=total)
            progress.update(tasks[phase], completed=done)

        try:
            summary = run_search(settings, output, resume=resume, overwrite=overwrite, progress=report)
        except (KeyError, PatientDataError, ValueError, FileExistsError) as error:
            raise fail(str(error)) from None
    Console().print(summary, soft_wrap=True)
