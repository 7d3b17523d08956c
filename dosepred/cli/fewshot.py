"""dosepred fewshot train | eval: view-learnable contrastive few-shot classification (supporting module)."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from dosepred.cli.common import app, console, fail, progress_bar
from dosepred.io.errors import PatientDataError

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
            raise fail("--patients applies to --data ct only")
        try:
            return fewshot_data.digits_patches(fewshot_data.DIGITS_NOVEL if novel else fewshot_data.DIGITS_BASE, size=size)
        except ImportError:
            raise fail("the digits need scikit-learn: pip install -e '.[fewshot]'") from None
    default = Path("data/pack/validation" if novel else "data/pack/train")
    source = patients or default
    classes = fewshot_data.CT_NOVEL if novel else fewshot_data.CT_BASE
    try:
        with progress_bar() as progress:
            task = progress.add_task(f"patches ({source})", total=None)
            return fewshot_data.ct_patches(source, classes, size=size, slices=slices,
                                           progress=lambda phase, done, total: progress.update(task, completed=done,
                                                                                                total=total))
    except PatientDataError as error:
        hint = "" if patients else f" (build it with: dosepred prepare ../shared/openkbp/... -o {default} --format pack)"
        raise fail(f"{error}{hint}") from None


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
        raise fail(f"--patch-size must be a multiple of 16 (the encoder halves it four times), got {patch_size}")
    try:
        config = FewShotConfig(method=method, steps=steps, ways=ways, shots=shots, queries=queries,
                               contrastive_weight=contrastive_weight, inner_lr=inner_lr, seed=seed,
                               views=ViewFamily().scaled(view_strength))
    except ValueError as error:
        raise fail(str(error)) from None
    if steps < 1 or view_strength < 0:
        raise fail(f"--steps must be at least 1 and --view-strength at least 0, got {steps} and {view_strength}")
    if threads:
        import torch

        torch.set_num_threads(threads)
    patches = _fewshot_patches(data, patients, novel=False, size=patch_size, slices=slices)
    with progress_bar() as progress:
        task = progress.add_task(f"train ({method})", total=steps)
        try:
            result = train_fewshot(patches, config, lambda phase, done, total: progress.update(task, completed=done))
        except ValueError as error:
            raise fail(str(error)) from None
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
            cache[key] = _fewshot_patches(data, patients, novel=True, size=key[0], slices=key[1] or 1)
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
        json_file.parent.mkdir(parents=True, exist_ok=True)
        content = {"data": data.value, "classes": list(patches.classes), "episodes": episodes, "queries": queries,
                   "seed": seed, "rows": [{k: (vars(v) if hasattr(v, "ci95") else v) for k, v in row.items()}
                                          for row in rows]}
        json_file.write_text(json.dumps(content, indent=2) + "\n")
