"""Ranking quality: Kendall tau-b between cheap estimates and stand-alone validation dose scores.

Ground truth: the JSON of ``benchmarks/nas_standalone.py`` (a fixed sample of architectures, each trained
stand-alone with several seeds); an architecture's score is its mean over seeds. Estimators, each scored
against it:
- zero-cost proxies at initialisation (``dosepred.nas.proxies``), the mean over ``--proxy-seeds``
  initialisations on the first two training patients, of the networks the ground truth trained (its
  ``networks`` record: widths, stem stride, input grid and beam channels; older files: the search's widths
  at ``--resolution`` without beam channels);
- weight-sharing supernets, each trained by a search strategy (``--supernets``: e.g. ``lenas``, its uniform
  path sampling; ``lenas:sampling=fair``, FairNAS's strict fairness; ``kshot``) for the same
  ``--supernet-passes`` training forward passes at ``--resolution``, on the same data as the ground truth (not
  augmented); each architecture run with its weights through the strategy's own ``path`` is scored twice: on
  the first ``--validation-patients`` validation patients at the working resolution (the search's own
  estimate, ``dosepred.nas.evaluator``), and on every validation patient at 128^3 with the ground truth's own
  scorer ("full grid"). The supernets have the search's widths at ``--resolution`` without beam channels, or,
  with ``--supernet-networks truth``, the ground truth's own networks and inputs (labels end in "@truth").
  ``--supernet-seeds 0 1`` trains one supernet per seed (labels end in "seed N" where N is not 0), and their
  mean estimate is an estimator too;
- a search's own estimates (``--search-ranked RUN/ranked.json``), read from its ranked list: no computation;
- short stand-alone training (``--low-fidelity FILE``: a ``nas_standalone.py`` table of the same sample with
  fewer steps, its seed mean), what a multi-fidelity search would rank its finalists by; give it other seeds
  than the ground truth's, so that the two share no initialisation or batch order.
Also the tau between the seeds' own stand-alone scores: how far the ground truth itself is stable. Every tau
has a 95 % bootstrap interval (architectures resampled). Every pair (estimate, stand-alone score per seed)
goes to a JSON file, so each tau can be recomputed.

Usage: python -m benchmarks.nas_ranking [--standalone benchmarks/results/nas_standalone.json]
           [--supernet-passes 1000] [--supernets lenas lenas:sampling=fair kshot] [--search-ranked RUN/ranked.json]
           [--low-fidelity SHORTER_TABLE] [--resolution 64] [--json benchmarks/results/nas_ranking.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from scipy.stats import kendalltau

from benchmarks.nas_standalone import INHERITED, full_width_entries, seed_table

from dosepred.data.dataset import PatientSamples
from dosepred.data.transforms import input_channels
from dosepred.devices import resolve_device
from dosepred.engine.trainer import validation_scores
from dosepred.inference.predictor import Predictor
from dosepred.io import sources
from dosepred.nas.evaluator import Evaluator, SearchData
from dosepred.nas.proxies import PROXIES
from dosepred.nas.space import SearchSpace, genotype_key
from dosepred.nas.strategies.base import Budget
from dosepred.nas.strategies import get_strategy
from dosepred.networks.searched import build_network


def tau_b(estimates: list[float], truth: list[float]) -> float:
    return float(kendalltau(estimates, truth).statistic)


def bootstrap_interval(estimates: list[float], truth: list[float], draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile interval of tau-b over architectures drawn with replacement; nan where no draw has one
    (e.g. estimates all equal)."""
    rng = np.random.default_rng(seed)
    x, y = np.asarray(estimates), np.asarray(truth)
    values = []
    for _ in range(draws):
        pick = rng.integers(len(x), size=len(x))
        if len(set(pick)) > 2:
            value = kendalltau(x[pick], y[pick]).statistic
            if np.isfinite(value):
                values.append(value)
    if not values:
        return float("nan"), float("nan")
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def proxy_estimates(genotypes: list[dict], channels: tuple[int, ...], batch: dict[str, torch.Tensor],
                    seeds: int, stem_stride: int = 1) -> dict[str, list[float]]:
    """Each proxy's mean over ``seeds`` initialisations, negated: lower estimates promise better architectures."""
    estimates: dict[str, list[float]] = {name: [] for name in PROXIES}
    for genotype in genotypes:
        values: dict[str, list[float]] = {name: [] for name in PROXIES}
        for seed in range(seeds):
            torch.manual_seed(seed)
            network = build_network(genotype=genotype, channels=channels, in_channels=batch["image"].shape[1],
                                    stem_stride=stem_stride)
            for name, proxy in PROXIES.items():
                values[name].append(proxy(network, batch))
        for name in PROXIES:
            estimates[name].append(-statistics.mean(values[name]))
    return estimates


def ranked_estimates(ranked: list[dict[str, Any]], genotypes: list[dict]) -> list[float]:
    """The estimated dose score that a search's ranked list gives each genotype (each must be in it)."""
    by_key = {genotype_key(entry["genotype"]): entry["estimated_dose_score"] for entry in full_width_entries(ranked)}
    missing = [number for number, genotype in enumerate(genotypes) if genotype_key(genotype) not in by_key]
    if missing:
        raise ValueError(f"architectures {missing} of the ground truth are not in the ranked list")
    return [by_key[genotype_key(genotype)] for genotype in genotypes]


def low_fidelity_estimates(table: dict[str, Any], genotypes: list[dict]) -> list[float]:
    """Each genotype's seed-mean dose score in another ``nas_standalone.py`` table (each must have a run in it)."""
    by_key = {genotype_key(row["genotype"]): [run["dose_score"] for run in row["runs"]]
              for row in table["architectures"] if row["runs"]}
    missing = [number for number, genotype in enumerate(genotypes) if genotype_key(genotype) not in by_key]
    if missing:
        raise ValueError(f"architectures {missing} of the ground truth have no run in it")
    return [statistics.mean(by_key[genotype_key(genotype)]) for genotype in genotypes]


def parse_searcher(text: str) -> tuple[str, dict[str, Any]]:
    """``name`` or ``name:option=value,...`` (values read as YAML) -> (strategy, options)."""
    name, _, settings = text.partition(":")
    options = {}
    for setting in filter(None, settings.split(",")):
        key, _, value = setting.partition("=")
        options[key] = yaml.safe_load(value)
    get_strategy(name, **options)  # an unknown strategy or option fails here, before any training
    return name, options


def file_name(label: str) -> str:
    """A ``parse_searcher`` label as a file or folder name."""
    return label.replace(":", "_").replace(",", "_")


def parse_searcher_label(text: str) -> str:
    """argparse's check of a ``--supernets`` entry: the label itself, once ``parse_searcher`` accepts it."""
    try:
        parse_searcher(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def supernet_label(label: str, seed: int) -> str:
    """The estimator's label of the supernet of ``label`` trained with ``seed``."""
    return f"{label} seed {seed}" if seed else label


def supernet_estimates(label: str, genotypes: list[dict], space: SearchSpace, data: SearchData, resolution: int,
                       passes: int, validation: list[Path], device: torch.device,
                       beam_angles: list[float] | None = None, suffix: str = "") -> dict[str, list[float]]:
    """The supernet of strategy ``label`` (``parse_searcher``) trained for ``passes`` training forward passes,
    each architecture run with its weights through the strategy's own ``path``: scored at the working
    resolution on the search's validation batch (the search's own estimate), and on ``validation`` at 128^3
    with the ground truth's scorer (``validation_scores``). ``suffix`` tells the space (and ``data.seed``, the
    supernet's initialisation, batches and paths, when not 0) apart in the labels and the supernet's run folder."""
    name, options = parse_searcher(label)
    run_dir = Path("runs") / "nas_ranking" / f"{file_name(label + suffix)}_{passes}"
    if data.seed:
        run_dir = run_dir.with_name(f"{run_dir.name}_seed{data.seed}")
    suffix = supernet_label(suffix, data.seed)
    budget = Budget(supernet_steps=passes, lr=2e-3, batch_size=2, max_sweeps=0, device=device, run_dir=run_dir,
                    resume=(run_dir / "supernet" / "checkpoints" / "last.pt").is_file())
    report = lambda phase, done, total: print(f"\r{label + suffix} {phase} {done}/{total}", end="", flush=True)  # noqa: E731
    result = get_strategy(name, **options).search(space, data, budget, report)
    print()
    evaluator = Evaluator(data, device=device)
    paths = [result.path({"genotype": genotype}) for genotype in genotypes]
    working = [evaluator.evaluate(path) for path in paths]
    full_grid = [validation_scores(Predictor(path, resolution=resolution, device=device, beam_angles=beam_angles),
                                   validation)["val_dose_score"] for path in paths]
    return {label + suffix: working, f"{label + suffix} full grid": full_grid}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--standalone", type=Path, default=Path("benchmarks/results/nas_standalone.json"))
    parser.add_argument("--train", type=Path, default=Path("data/pack/train"), help="the ground truth's training patients")
    parser.add_argument("--validation", type=Path, default=Path("data/pack/validation"))
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--supernet-passes", type=int, default=1000,
                        help="training forward passes of each strategy's supernet; 0: no supernet estimates")
    parser.add_argument("--supernets", nargs="+", type=parse_searcher_label, default=["lenas"],
                        help="strategies whose supernets estimate, each name[:option=value,...], "
                             "e.g. lenas lenas:sampling=fair kshot")
    parser.add_argument("--supernet-networks", choices=("search", "truth"), default="search",
                        help="search: supernets at the search's widths (8-16-32-64) and --resolution, no beam "
                             "channels; truth: at the ground truth's own networks and inputs (its networks record)")
    parser.add_argument("--supernet-seeds", type=int, nargs="+", default=[0],
                        help="one supernet per seed and strategy (its initialisation, batches and paths), each an "
                             "estimator; with several, their mean is one too")
    parser.add_argument("--search-ranked", type=Path, nargs="*", default=[], metavar="RANKED",
                        help="ranked.json files of searches whose own estimates are ranked too")
    parser.add_argument("--low-fidelity", type=Path, nargs="*", default=[], metavar="TABLE",
                        help="nas_standalone.py tables of the same sample trained for fewer steps: each an estimator")
    parser.add_argument("--validation-patients", type=int, default=12)
    parser.add_argument("--proxy-seeds", type=int, default=3, help="initialisations per proxy; 0: no proxies")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto: where the supernets train")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/nas_ranking.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    truth_file = json.loads(args.standalone.read_text())
    architectures, seeds, scores = seed_table(truth_file)  # every architecture over the same seeds
    if len(architectures) < 3 or len(seeds) < 2:
        parser.error(f"{args.standalone}: fewer than 3 architectures with the same two seeds or more")
    genotypes = [a["genotype"] for a in architectures]
    per_seed = {seed: [float(score) for score in scores[:, column]] for column, seed in enumerate(seeds)}
    truth = [float(score) for score in scores.mean(axis=1)]

    channels = (8, 16, 32, 64)
    networks = truth_file.get("networks", {"channels": list(channels), "stem_stride": 1,
                                            "resolution": args.resolution, "beam_angles": None})
    data_config = {"train": str(args.train), "validation": str(args.validation), "resolution": args.resolution,
                   "augment": False, "beam_angles": None}  # not augmented: every strategy sees the same batches
    space, suffix = SearchSpace(channels), ""
    if args.supernet_networks == "truth":
        if "networks" not in truth_file:
            parser.error(f"{args.standalone} has no record of its networks: --supernet-networks truth needs one")
        space = SearchSpace(tuple(networks["channels"]), in_channels=len(input_channels(networks["beam_angles"])),
                            stem_stride=networks["stem_stride"])
        data_config |= {"resolution": networks["resolution"], "beam_angles": networks["beam_angles"]}
        suffix = "@truth"
    estimates: dict[str, list[float]] = {}
    for ranked in args.search_ranked:
        try:
            estimates[f"search {ranked.stem}"] = ranked_estimates(json.loads(ranked.read_text()), genotypes)
        except (OSError, ValueError, KeyError, TypeError) as error:
            parser.error(f"{ranked}: {error}")
    for table in args.low_fidelity:
        try:
            shorter = json.loads(table.read_text())
            steps = shorter["recipe"].split(",")[0].split(" of ")[0]  # "150 steps"
            short_seeds = sorted({run["seed"] for row in shorter["architectures"] for run in row["runs"]})
            start = " from supernet weights" if INHERITED in shorter["recipe"] else ""
            label = f"stand-alone {steps}{start}, seeds {short_seeds}"
            if label in estimates:
                raise ValueError(f"an earlier --low-fidelity table has the same steps, start and seeds ({label})")
            estimates[label] = low_fidelity_estimates(shorter, genotypes)
        except (OSError, ValueError, KeyError, TypeError) as error:
            parser.error(f"{table}: {error}")
    if args.proxy_seeds:
        started = time.perf_counter()
        two = PatientSamples(sources.find_patients(args.train)[:2], resolution=networks["resolution"],
                             beam_angles=networks["beam_angles"]).batch([0, 1], None)
        estimates |= proxy_estimates(genotypes, tuple(networks["channels"]), two, args.proxy_seeds,
                                     networks["stem_stride"])
        print(f"zero-cost proxies ({networks}): {time.perf_counter() - started:.0f} s", flush=True)
    validation = sources.find_patients(args.validation)
    supernets = args.supernets if args.supernet_passes else []
    if supernets:
        data = SearchData.from_config(data_config, seed=0, validation_patients=args.validation_patients)
    for label in supernets:
        for seed in args.supernet_seeds:
            started = time.perf_counter()
            found = supernet_estimates(label, genotypes, space, dataclasses.replace(data, seed=seed),
                                       data_config["resolution"], args.supernet_passes, validation,
                                       resolve_device(args.device), data_config["beam_angles"], suffix)
            estimates |= found
            print(f"{', '.join(found)}: {args.supernet_passes} forward passes at {data_config['resolution']}^3, "
                  f"{time.perf_counter() - started:.0f} s", flush=True)
        if len(args.supernet_seeds) > 1:
            for kind in ("", " full grid"):
                of_seeds = [estimates[supernet_label(label + suffix, seed) + kind] for seed in args.supernet_seeds]
                estimates[f"{label + suffix}{kind}, mean of {len(of_seeds)} supernets"] = [
                    float(value) for value in np.mean(of_seeds, axis=0)]

    print(f"\n{len(architectures)} architectures; ground truth: {truth_file['recipe']}; seeds {seeds}")
    rows = {"seed vs seed": [tau_b(per_seed[a], per_seed[b]) for a, b in itertools.combinations(seeds, 2)]}
    print(f"{'estimator':<44} {'tau-b':>6} {'95% interval':>16}   per seed")
    first, second = seeds[0], seeds[1]
    low, high = bootstrap_interval(per_seed[first], per_seed[second])
    print(f"{'seed vs seed':<44} {rows['seed vs seed'][0]:>6.2f} {f'[{low:.2f}, {high:.2f}]':>16}")
    summary = {"seed vs seed": {"tau_b": rows["seed vs seed"][0], "interval": [low, high]}}
    for name, values in estimates.items():
        tau = tau_b(values, truth)
        low, high = bootstrap_interval(values, truth)
        by_seed = [tau_b(values, per_seed[seed]) for seed in seeds]
        summary[name] = {"tau_b": tau, "interval": [low, high], "per_seed": by_seed}
        print(f"{name:<44} {tau:>6.2f} {f'[{low:.2f}, {high:.2f}]':>16}   " + " ".join(f"{t:.2f}" for t in by_seed))
    pairs = [{"architecture": number, "genotype": genotype, "standalone": {str(s): per_seed[s][number] for s in seeds},
              "standalone_mean": truth[number], "estimates": {name: values[number] for name, values in estimates.items()}}
             for number, genotype in enumerate(genotypes)]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    settings = {"ground_truth": truth_file["recipe"], "resolution": data_config["resolution"], "device": args.device,
                "supernet_networks": args.supernet_networks,
                "supernet_passes": args.supernet_passes, "supernets": args.supernets,
                "supernet_seeds": args.supernet_seeds,
                "validation_patients": args.validation_patients, "proxy_seeds": args.proxy_seeds,
                "proxy_networks": networks,
                "search_ranked": [str(path) for path in args.search_ranked],
                "low_fidelity": [str(path) for path in args.low_fidelity]}
    args.json.write_text(json.dumps({**settings, "summary": summary, "pairs": pairs}, indent=1) + "\n")


if __name__ == "__main__":
    main()
