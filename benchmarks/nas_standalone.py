"""Stand-alone ground truth for the search: a fixed sample of architectures, each trained with several seeds.

The sample is the plain U-Net of the search space plus architectures drawn uniformly from it (a fixed
generator seed), or, with ``--ranked``, architectures at evenly spaced ranks of a search's ``ranked.json`` (the
first, the last and those between: a sample spread over the search's own ranking), so every search strategy
and zero-cost proxy is ranked against the same architectures (``benchmarks/nas_ranking.py``). Each
(architecture, seed) is trained with the same recipe (same data, resolution, steps, learning rate) and scored
once, at its last step, on the validation split with the OpenKBP dose and DVH scores on the full 128^3 grid.
The seed sets the initial weights and the batch order (and the augmentation, with ``--augment``). Results go
to a JSON file after every run, and a rerun skips the runs it already holds, so the table can be built over
several sessions.

Under the table: the seed spread, the ANOVAs (do the architectures differ beyond seed noise?) and the tau-b
ceiling (``tau_ceiling``: how high any estimator's tau-b against the seed mean can go under that noise).

On two cores, two processes (``--seeds 0 --threads 1 --json A``, ``--seeds 1 --threads 1 --json B``) and
``--merge A B --json TABLE`` build the table in about half the time of one process on two threads.

With ``--recipe-config FILE`` every run trains with a training config instead (``configs/full_cpu.yaml``: the
teachers' recipe at 128^3 with beam channels and the DVH-aware loss), ``--widths``/``--stem-stride`` giving the
networks' size (the teachers': ``--widths 16 32 64 128 --stem-stride 2``). With ``--inherit CHECKPOINT`` every
network starts from its path's weights in a trained supernet (``benchmarks/nas_ranking.py --supernet-networks
truth`` leaves one in ``runs/nas_ranking/<strategy>@truth_<passes>/supernet/checkpoints/last.pt``) instead of a random start: a
short run of that is an estimator between weight sharing and training from scratch.

Usage: python benchmarks/nas_standalone.py [--architectures 10] [--seeds 0 1] [--steps 300] [--resolution 64] [--augment]
       [--recipe-config FILE --widths 16 32 64 128 --stem-stride 2] [--inherit SUPERNET_CHECKPOINT]
       [--ranked runs/search/ranked.json] [--json benchmarks/results/nas_standalone.json]
       python benchmarks/nas_standalone.py --merge PART [PART ...] --json TABLE
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from scipy.stats import f as f_distribution
from scipy.stats import f_oneway, kendalltau
from torch import nn

from dosepred.data.dataset import ExpandedSamples, PatientSamples
from dosepred.devices import hardware
from dosepred.engine.config import ConfigError, load_config
from dosepred.engine.trainer import Trainer
from dosepred.io.files import atomic_file
from dosepred.nas.space import SearchSpace, genotype_key

CHANNELS = (8, 16, 32, 64)  # the search's widths (configs/search_*.yaml)
INHERITED = "starting from the supernet weights of"  # in a recipe's description: nas_ranking.py reads it
CHECKPOINT_EVERY = 50  # steps: a run stopped (a session's end, a timeout) resumes from its last checkpoint


class SharedDataTrainer(Trainer):
    """A trainer that reads the training patients once and shares them with every later run; without
    augmentation they are expanded once at the working resolution (``ExpandedSamples``)."""

    shared: dict[str, PatientSamples | ExpandedSamples] = {}

    def build_data(self) -> None:
        key = json.dumps(self.config["data"], sort_keys=True)
        if key in SharedDataTrainer.shared:
            super().build_validation_paths()
        else:
            super().build_data()
            augmented = self.config["data"]["augment"]
            SharedDataTrainer.shared[key] = self.train_data if augmented else ExpandedSamples(self.train_data)
        self.train_data = SharedDataTrainer.shared[key]


def same_config(run_dir: Path, config: dict[str, Any]) -> bool:
    """Whether ``run_dir`` holds a run of exactly ``config`` (as the trainer wrote it)."""
    saved = run_dir / "config.yaml"
    return saved.is_file() and yaml.safe_load(saved.read_text()) == json.loads(json.dumps(config))


def architecture_sample(count: int, space: SearchSpace, seed: int = 2026) -> list[dict[str, Any]]:
    """The plain U-Net, then distinct uniformly drawn architectures: ``count`` genotypes in all."""
    rng = np.random.default_rng(seed)
    sample = [space.reference()]
    while len(sample) < count:
        genotype = space.sample(rng)
        if genotype_key(genotype) not in {genotype_key(g) for g in sample}:
            sample.append(genotype)
    return sample


def full_width_entries(ranked: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A search's ranked list at its full widths only: K-shot ranks its best genotypes again at narrower widths,
    in the same list, and those estimates are of other networks."""
    widest = max((entry["channels"] for entry in ranked if "channels" in entry), key=sum, default=None)
    return [entry for entry in ranked if entry.get("channels", widest) == widest]


def ranked_sample(count: int, ranked: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``count`` genotypes at evenly spaced ranks of a search's ranked list (its full widths), its first and last
    included."""
    ranked = full_width_entries(ranked)
    if count < 2 or len(ranked) < count:
        raise ValueError(f"cannot spread {count} architectures over a ranking of {len(ranked)}")
    ranks = np.linspace(0, len(ranked) - 1, count).round().astype(int)
    return [ranked[rank]["genotype"] for rank in ranks]


def inherit_weights(network: nn.Module, checkpoint: Path) -> None:
    """Start ``network`` from its path's weights in a supernet's training checkpoint (a supernet and a stand-alone
    network name their parameters alike); ValueError where the supernet lacks one or holds another shape."""
    supernet = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]
    own = network.state_dict()
    unfit = [name for name, value in own.items() if name not in supernet or supernet[name].shape != value.shape]
    if unfit:
        raise ValueError(f"{checkpoint}: no supernet weights fit {len(unfit)} of the network's tensors, "
                         f"e.g. {unfit[0]}: another space or other widths")
    network.load_state_dict({name: supernet[name] for name in own})


@dataclass(frozen=True)
class Recipe:
    """How every stand-alone run trains and is scored; ``describe()`` names it in the results file. With
    ``config_file`` (a training config, e.g. ``configs/full_cpu.yaml``: 128^3, beam channels, DVH-aware loss,
    augmentation) that file sets everything but the seed, threads, device, patients and steps."""

    steps: int = 300
    lr: float = 2e-3
    resolution: int = 64
    augment: bool = False
    threads: int = 2
    train: str = "data/pack/train"
    validation: str = "data/pack/validation"
    device: str = "cpu"
    config_file: str | None = None
    channels: tuple[int, ...] = CHANNELS
    stem_stride: int = 1
    inherit: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Recipe:
        """The recipe the arguments describe; ValueError where --recipe-config and --lr/--resolution/--augment meet."""
        given = [f"--{name}" for name in ("lr", "resolution", "augment") if getattr(args, name) is not None]
        if args.recipe_config is not None:
            if given:
                raise ValueError(f"{', '.join(given)}: with --recipe-config the config file sets them")
            file = load_config(args.recipe_config)
            lr, resolution, augment = file["optim"]["lr"], file["data"]["resolution"], file["data"]["augment"]
        else:
            lr = 2e-3 if args.lr is None else args.lr
            resolution = 64 if args.resolution is None else args.resolution
            augment = bool(args.augment)
        return cls(args.steps, lr, resolution, augment, args.threads, str(args.train), str(args.validation),
                   args.device, None if args.recipe_config is None else str(args.recipe_config),
                   tuple(args.widths), args.stem_stride, None if args.inherit is None else str(args.inherit))

    def describe(self) -> str:
        network = f"channels {list(self.channels)}" + (f", stem stride {self.stem_stride}" if self.stem_stride != 1 else "")
        if self.inherit is not None:
            digest = hashlib.sha256(Path(self.inherit).read_bytes()).hexdigest()[:12]
            network += f", {INHERITED} {self.inherit} (sha256 {digest})"
        if self.config_file is not None:
            digest = hashlib.sha256(Path(self.config_file).read_bytes()).hexdigest()[:12]
            return (f"{self.steps} steps of {self.config_file} (sha256 {digest}), {network}; "
                    "scored on every validation patient at 128^3")
        return (f"{self.steps} steps, batch 2, AdamW lr {self.lr} (warm-up 20, cosine), masked L1, "
                f"{'augmentation' if self.augment else 'no augmentation'}, "
                f"{self.resolution}^3, {network}; scored on every validation patient at 128^3")

    def networks(self) -> dict[str, Any]:
        """What every stand-alone network is and sees, kept in the results file so that
        ``benchmarks/nas_ranking.py`` runs its zero-cost proxies on those very networks and inputs."""
        data = self.config(0)["data"]
        return {"channels": list(self.channels), "stem_stride": self.stem_stride, "resolution": data["resolution"],
                "beam_angles": data["beam_angles"]}

    def config(self, seed: int) -> dict[str, Any]:
        common = [f"seed={seed}", f"threads={self.threads}", f"device={self.device}", f"data.train={self.train}",
                  f"data.validation={self.validation}", f"optim.steps={self.steps}", f"validate_every={self.steps}",
                  f"checkpoint_every={min(self.steps, CHECKPOINT_EVERY)}"]
        if self.config_file is not None:
            return load_config(self.config_file, common)
        return load_config(None, [*common, f"data.resolution={self.resolution}", f"data.augment={self.augment}",
                                  f"optim.lr={self.lr}", "optim.warmup_steps=20", "optim.batch_size=2"])

    def run(self, genotype: dict[str, Any], seed: int, run_dir: Path) -> dict[str, Any]:
        """One stand-alone run, scored at its last step: seed, dose and DVH scores, seconds (of training and
        scoring, summed over resumes), device type, parameters, precision (bf16 only where the hardware computes it
        natively, so a CPU without AMX or AVX512-BF16 trains in fp32) and hardware. A run folder that holds a
        checkpoint of this very config resumes from it, any other is replaced. It prints a progress line at every
        tenth of its steps."""
        config = self.config(seed)
        config["network"] = {"name": "searched", "genotype": genotype, "channels": list(self.channels),
                             "stem_stride": self.stem_stride}
        started = time.perf_counter()

        def report(step: int, _: dict[str, float]) -> None:
            if step % max(1, self.steps // 10) == 0:
                print(f"{run_dir.name}: step {step}/{self.steps} ({time.perf_counter() - started:.0f} s)", flush=True)

        trainer = SharedDataTrainer(config, run_dir, resume=same_config(run_dir, config), overwrite=True)
        if self.inherit is not None and not trainer.resuming:
            inherit_weights(trainer.network, Path(self.inherit))
        if trainer.resuming:
            print(f"{run_dir.name}: resumed at step {trainer.step}", flush=True)
        last = trainer.fit(report)[-1]
        return {"seed": seed, "dose_score": last["val_dose_score"], "dvh_score": last["val_dvh_score"],
                "seconds": round(trainer.trained_seconds, 1), "device": trainer.device.type,
                "parameters": sum(p.numel() for p in trainer.network.parameters()),
                "precision": "bf16" if trainer.amp else "fp32", "hardware": hardware(trainer.device)}


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=300, help="stand-alone training steps")
    parser.add_argument("--lr", type=float, help="AdamW learning rate (default 2e-3)")
    parser.add_argument("--resolution", type=int, help="training grid (default 64)")
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                        help="augment every batch (expands the full-grid samples each step: slow on a CPU)")
    parser.add_argument("--recipe-config", type=Path,
                        help="train with this training config instead (e.g. configs/full_cpu.yaml: the teachers' "
                             "recipe); it sets lr, resolution, augmentation, beams, loss and batch")
    parser.add_argument("--widths", type=int, nargs=4, default=list(CHANNELS), help="the networks' channels")
    parser.add_argument("--stem-stride", type=int, choices=(1, 2), default=1,
                        help="2: the stem halves the grid (the teachers' 128^3 networks)")
    parser.add_argument("--inherit", type=Path, metavar="SUPERNET_CHECKPOINT",
                        help="start every network from its path's weights in this trained supernet (a training "
                             "checkpoint of the same widths and inputs) instead of a random start")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train", type=Path, default=Path("data/pack/train"))
    parser.add_argument("--validation", type=Path, default=Path("data/pack/validation"))
    parser.add_argument("--device", default="cpu",
                        help="cpu, cuda or auto (each run records the device type it trained on)")


def load_results(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {"architectures": []}


def save_results(path: Path, results: dict[str, Any]) -> None:
    """Write through a temporary file, so an interrupted run never leaves a half-written table."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as partial:
        partial.write_text(json.dumps(results, indent=1) + "\n")


def merge_results(results: dict[str, Any], part: dict[str, Any]) -> None:
    """Add the runs of ``part`` (a results file of the same recipe and sample, e.g. another process's seeds)
    that ``results`` lacks; each architecture's runs stay ordered by seed."""
    if results["architectures"] and part["recipe"] != results["recipe"]:
        raise ValueError(f"another recipe: {part['recipe']}")
    results["recipe"] = part["recipe"]
    if "networks" in part:
        results["networks"] = part["networks"]
    for number, architecture in enumerate(part["architectures"]):
        if number == len(results["architectures"]):
            results["architectures"].append({"genotype": architecture["genotype"], "runs": []})
        mine = results["architectures"][number]
        if genotype_key(mine["genotype"]) != genotype_key(architecture["genotype"]):
            raise ValueError(f"architecture {number} differs")
        if "parameters" in architecture:
            mine["parameters"] = architecture["parameters"]
        seeds = {run["seed"] for run in mine["runs"]}
        mine["runs"] = sorted(mine["runs"] + [run for run in architecture["runs"] if run["seed"] not in seeds],
                              key=lambda run: run["seed"])


def seed_spread(runs: list[dict[str, Any]]) -> float:
    """Seed-to-seed spread of the dose score: the sample standard deviation (Gy)."""
    scores = [run["dose_score"] for run in runs]
    return statistics.stdev(scores) if len(scores) > 1 else float("nan")


def seed_table(results: dict[str, Any],
               seeds: list[int] | None = None) -> tuple[list[dict[str, Any]], list[int], np.ndarray]:
    """The architectures that have a run of every one of ``seeds`` (by default the seeds that every architecture
    with two runs or more shares), those seeds, and their dose scores [architecture, seed]. A truth averaged
    over other seeds for other architectures would fold the seeds' own effect (one seed is easier for most
    architectures) into the order it is meant to give."""
    by_seed = [{run["seed"]: run["dose_score"] for run in a["runs"]} for a in results["architectures"]]
    if seeds is None:
        seed_sets = [set(scores) for scores in by_seed if len(scores) >= 2]
        seeds = sorted(set.intersection(*seed_sets)) if seed_sets else []
    kept = [number for number, scores in enumerate(by_seed) if all(seed in scores for seed in seeds)]
    table = np.array([[by_seed[number][seed] for seed in seeds] for number in kept], dtype=float)
    return [results["architectures"][number] for number in kept], list(seeds), table.reshape(len(kept), len(seeds))


def blocked_anova(scores: np.ndarray) -> tuple[float, float]:
    """(F, p) of the architecture effect in a two-way ANOVA without interaction over ``scores[architecture,
    seed]``: the seed is a block, since it sets the batch order and augmentation of every architecture alike, so
    a seed that is easier for all of them is not counted as noise (a randomised complete block design)."""
    a, b = scores.shape
    grand = scores.mean()
    architectures = b * ((scores.mean(axis=1) - grand) ** 2).sum()
    seeds = a * ((scores.mean(axis=0) - grand) ** 2).sum()
    error = ((scores - grand) ** 2).sum() - architectures - seeds
    error_df = (a - 1) * (b - 1)
    statistic = (architectures / (a - 1)) / (error / error_df)
    return float(statistic), float(f_distribution.sf(statistic, a - 1, error_df))


def tau_ceiling(scores: np.ndarray, draws: int = 4000, seed: int = 0) -> dict[str, list[float]]:
    """How high a Kendall tau-b against the seed mean of ``scores[architecture, seed]`` the seed noise lets any
    estimator reach, simulated under the blocked model of ``blocked_anova``: each architecture's true score (its
    observed mean's deviation scaled so that their variance is the means' less the noise the means still hold)
    plus normal noise of the residual variance per run.
    "oracle": an estimator that knows the true scores; "one_more_seed": one more run of the same recipe (a
    search's finalists trained at the full budget). Each: [mean, 5th percentile, 95th percentile, P(tau-b >= 0.5)];
    empty where the architectures do not differ beyond the noise."""
    a, b = scores.shape
    means = scores.mean(axis=1)
    residual = scores - means[:, None] - scores.mean(axis=0)[None, :] + scores.mean()
    noise = (residual ** 2).sum() / ((a - 1) * (b - 1))
    between = means.var(ddof=1)
    if between <= noise / b:  # the means vary no more than their noise: nothing to rank
        return {}
    shrink = 1 - noise / b / between  # the true scores' share of the means' variance
    # true scores with the true scores' variance (shrink x the means'): deviations scaled by its square root
    truth = means.mean() + np.sqrt(shrink) * (means - means.mean())
    rng = np.random.default_rng(seed)
    taus: dict[str, list[float]] = {"oracle": [], "one_more_seed": []}
    for _ in range(draws):
        runs = truth[:, None] + rng.normal(0.0, np.sqrt(noise), (a, b + 1))
        table = runs[:, :b].mean(axis=1)
        taus["oracle"].append(kendalltau(truth, table).statistic)
        taus["one_more_seed"].append(kendalltau(runs[:, b], table).statistic)
    return {name: [float(np.mean(values)), *map(float, np.percentile(values, [5, 95])),
                   float(np.mean(np.array(values) >= 0.5))] for name, values in taus.items()}


def print_table(results: dict[str, Any]) -> None:
    print(f"\n{results['recipe']}")
    print(f"{'arch':>4} {'params':>8} {'dose per seed (Gy)':>30} {'mean':>7} {'spread':>7} {'DVH mean':>9}")
    for number, architecture in enumerate(results["architectures"]):
        runs = architecture["runs"]
        doses = " ".join(f"{run['dose_score']:.3f}" for run in runs)
        print(f"{number:>4} {architecture['parameters']:>8} {doses:>30} "
              f"{statistics.mean(r['dose_score'] for r in runs):>7.3f} {seed_spread(runs):>7.3f} "
              f"{statistics.mean(r['dvh_score'] for r in runs):>9.3f}")
    spreads = [seed_spread(a["runs"]) for a in results["architectures"] if len(a["runs"]) > 1]
    means = [statistics.mean(r["dose_score"] for r in a["runs"]) for a in results["architectures"]]
    if spreads and len(means) > 1:
        print(f"median seed spread {statistics.median(spreads):.3f} Gy; spread of the architectures' means "
              f"{statistics.stdev(means):.3f} Gy (range {min(means):.3f}-{max(means):.3f})")
        groups = [[run["dose_score"] for run in a["runs"]] for a in results["architectures"] if len(a["runs"]) > 1]
        if len(groups) > 1:  # do the architectures differ beyond seed noise? F near 1: no order to rank
            anova = f_oneway(*groups)
            print(f"one-way ANOVA over the architectures: F = {anova.statistic:.2f}, p = {anova.pvalue:.3f}")
            by_seed = [{run["seed"]: run["dose_score"] for run in a["runs"]} for a in results["architectures"]]
            _, seeds, complete = seed_table(results, sorted(set().union(*by_seed)))
            if len(complete) > 1 and len(seeds) > 1:
                statistic, p_value = blocked_anova(complete)
                print(f"two-way ANOVA, seed as block ({len(complete)} architectures with the same seeds): "
                      f"F = {statistic:.2f}, p = {p_value:.3f}")
                for name, (mean, low, high, reach) in tau_ceiling(complete).items():
                    print(f"tau-b ceiling against the seed mean, {name.replace('_', ' ')}: {mean:.2f} "
                          f"(5-95 % {low:.2f}-{high:.2f}; P(>= 0.5) {reach:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--architectures", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--ranked", type=Path, help="a search's ranked.json: spread the sample over its ranks "
                                                     "instead of drawing it uniformly")
    add_recipe_arguments(parser)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/nas_standalone.json"))
    parser.add_argument("--merge", type=Path, nargs="+", metavar="PART",
                        help="only merge these results files (e.g. one process per seed) into --json, then print it")
    args = parser.parse_args()

    if args.merge:
        results = load_results(args.json)
        for part in args.merge:
            try:
                merge_results(results, json.loads(part.read_text()))
            except (OSError, ValueError, KeyError) as error:
                parser.error(f"{part}: {error}")
        save_results(args.json, results)
        print_table(results)
        return
    space = SearchSpace(CHANNELS)
    try:
        recipe = Recipe.from_args(args)
    except (ValueError, ConfigError) as error:
        parser.error(str(error))
    description = recipe.describe()
    results = load_results(args.json)
    if results["architectures"] and results.get("recipe") != description:
        parser.error(f"{args.json} holds runs of another recipe ({results.get('recipe')}): choose another --json")
    results["recipe"] = description
    results["networks"] = recipe.networks()
    if args.ranked:
        try:
            sample = ranked_sample(args.architectures, json.loads(args.ranked.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as error:
            parser.error(f"{args.ranked}: {error}")
    else:
        sample = architecture_sample(args.architectures, space)
    for number, genotype in enumerate(sample):
        if number == len(results["architectures"]):
            results["architectures"].append({"genotype": genotype, "runs": []})
        architecture = results["architectures"][number]
        if genotype_key(architecture["genotype"]) != genotype_key(genotype):
            parser.error(f"{args.json}: architecture {number} differs from the sample: choose another --json")
        for seed in args.seeds:
            if any(run["seed"] == seed for run in architecture["runs"]):
                continue
            run = recipe.run(genotype, seed, Path("runs") / "nas_standalone" / args.json.stem / f"arch{number}_seed{seed}")
            architecture["parameters"] = run.pop("parameters")
            architecture["runs"].append(run)
            save_results(args.json, results)
            print(json.dumps({"architecture": number, **architecture["runs"][-1]}), flush=True)
    save_results(args.json, results)  # also a file whose runs were all done before gains the networks record
    print_table(results)


if __name__ == "__main__":
    main()
