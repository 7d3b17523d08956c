"""dosepred fewshot train | eval: view-learnable contrastive few-shot classification (supporting module)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from dosepred.cli.common import (ConfigFile, JsonFile, Overrides, Overwrite, Resume, RunFolder, Threads, app, console,
                                 fail, progress_bar, train_with_progress, write_json)
from dosepred.io.errors import PatientDataError

fewshot_app = typer.Typer(help="Few-shot classification of CT patches (or digits): ProtoNet, + contrastive with "
                          "random views, + contrastive with learned views.", no_args_is_help=True)
app.add_typer(fewshot_app, name="fewshot")


class FewShotData(str, Enum):
    ct = "ct"
    digits = "digits"


def _fewshot_patches(data: FewShotData, patients: Path | None, *, size: int, slices: int):
    """The novel (evaluation) patch set; clear errors for missing data or scikit-learn."""
    from dosepred.fewshot.data import load_patches

    if data is FewShotData.ct:
        patients = patients or Path("data/pack/validation")
    try:
        with progress_bar() as progress:
            task = progress.add_task(f"patches ({patients or data.value})", total=None)
            return load_patches(data.value, patients, novel=True, size=size, slices=slices,
                                progress=lambda phase, done, total: progress.update(task, completed=done, total=total))
    except ImportError:
        raise fail("the digits need scikit-learn: pip install -e '.[fewshot]'") from None
    except (PatientDataError, ValueError) as error:
        raise fail(str(error)) from None


@fewshot_app.command("train")
def fewshot_train(output: RunFolder, config: ConfigFile = None, overrides: Overrides = None, resume: Resume = False,
                  overwrite: Overwrite = False, threads: Threads = None) -> None:
    """Meta-train an encoder on episodes of the base classes; OUTPUT/best is a model for 'fewshot eval'."""
    from dosepred.engine.config import FEWSHOT_DEFAULTS
    from dosepred.fewshot.train import FewShotTrainer

    def build(settings: dict, progress) -> FewShotTrainer:  # noqa: ANN001
        try:
            return FewShotTrainer(settings, output, resume=resume, overwrite=overwrite, progress=progress)
        except ImportError:
            raise ValueError("the digits need scikit-learn: pip install -e '.[fewshot]'") from None

    trainer = train_with_progress(output, config, overrides, resume=resume, threads=threads,
                                  defaults=FEWSHOT_DEFAULTS, label="episodes", build=build)
    last = trainer.history[-1]
    console.print(f"{trainer.settings['method']}: {trainer.step} episodes in {last['elapsed_s'] / 60:.1f} min, last "
                  f"training accuracy {100 * last['accuracy']:.1f}%; model in {output / 'best'}")


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
    json_file: JsonFile = None,
) -> None:
    """N-way K-shot accuracy (mean ± 95% CI over the episodes) of each model on the novel classes."""
    from dosepred.fewshot.evaluate import evaluate as evaluate_fewshot
    from dosepred.fewshot.train import load_encoder

    shots = shots or [1, 5]
    if ways < 2 or min(shots) < 1 or queries < 1 or episodes < 2:
        raise fail(f"need --ways >= 2, --shots >= 1, --queries >= 1, --episodes >= 2 "
                    f"(got {ways}, {shots}, {queries}, {episodes})")
    try:
        loaded = [(folder, *load_encoder(folder)) for folder in models]
    except (FileNotFoundError, KeyError, RuntimeError, ValueError) as error:
        raise fail(str(error)) from None
    cache: dict[tuple[int, int], object] = {}
    rows: list[dict] = []
    for folder, encoder, config in loaded:
        described = config["data"]
        if described["dataset"] != data.value:
            raise fail(f"{folder} was trained on {described['dataset']}, not {data.value} (give --data)")
        key = (described["patch_size"], described.get("slices", 0))
        if key not in cache:
            cache[key] = _fewshot_patches(data, patients, size=key[0], slices=key[1] or 1)
        patches = cache[key]
        row = {"model": str(folder), "method": config["train"]["method"],
               "training_seconds": config.get("training_seconds"), "steps": config["train"]["steps"]}
        with progress_bar() as progress:
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
                raise fail(str(error)) from None
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
        content = {"data": data.value, "classes": list(patches.classes), "episodes": episodes, "queries": queries,
                   "seed": seed, "rows": [{k: (vars(v) if hasattr(v, "ci95") else v) for k, v in row.items()}
                                          for row in rows]}
        write_json(json_file, content)
