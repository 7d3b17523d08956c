"""One comparison of the search strategies on the same data and budget, with their ablations, against the
seed-checked ground truth of ``benchmarks/nas_standalone.py``.

Per variant (strategy + options): search wall time, training forward passes, sampled and evaluated
architectures; Kendall tau-b (with its 95 % bootstrap interval, and against each seed alone) between the
strategy's weight-sharing estimates of the ground truth's architectures and their stand-alone scores (mean over
seeds); the best found architecture trained stand-alone with the ground truth's own recipe and seeds (mean and
seed spread), its parameters and MACs (one input at the working resolution). The searches see the ground
truth's training patients, not augmented, in the networks and on the grid of ``--config`` (``search.channels``,
``search.stem_stride``, ``data.resolution``, ``data.beam_angles``), or with ``--supernet-networks truth`` in the
ground truth's own (its ``networks`` record).

Each variant is searched once per ``--search-seeds`` seed (its supernet's initialisation, batches and paths); the
table gives the mean ± SD over them. Work is cached in OUT (search/<variant>_seed<seed>.json,
standalone/<architecture>_seed<seed>.json; the stand-alone runs' checkpoints in runs/nas_comparison/<OUT's name>/),
so the script can be rerun, split across processes (``--variants``, ``--shard i/n``) and stopped between steps;
with ``--search-only`` the table has the searches' columns alone, and a variant's stand-alone columns show how many
of its runs are done until all are (they run variant by variant).

Usage: python -m benchmarks.nas_comparison OUT --config configs/search_compare_cpu.yaml
           --standalone benchmarks/results/nas_standalone_ranked_full500.json --recipe-config configs/full_cpu.yaml
           --widths 16 32 64 128 --stem-stride 2 --steps 500
           [--supernet-networks truth] [--variants lenas random ...] [--search-seeds 0 1] [--seeds 0 1]
           [--threads 2] [--search-only] [--shard 0/1]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import f_oneway, rankdata

from benchmarks.nas_ranking import bootstrap_interval, file_name, parse_searcher, parse_searcher_label, tau_b
from benchmarks.nas_standalone import Recipe, add_recipe_arguments, seed_table
from dosepred.engine.config import SEARCH_DEFAULTS, load_config
from dosepred.io.files import atomic_file
from dosepred.devices import resolve_device
from dosepred.nas.cost import architecture_cost
from dosepred.nas.evaluator import Evaluator, SearchData
from dosepred.nas.space import SearchSpace, genotype_key
from dosepred.nas.strategies import Budget, get_strategy
from dosepred.progress import Progress

#: The strategies and the ablations the comparison asks for, each ``name[:option=value,...]`` (``parse_searcher``).
VARIANTS = ["lenas", "lenas:sampling=fair", "random", "kshot", "kshot:k=1", "gold", "gold:pruning=hard", "fpnas",
            "fpnas:adaptive=false"]
SETTINGS_FILE = "settings.json"  # what the cached results of an output folder were made with


def architecture_id(genotype: dict[str, Any]) -> str:
    return hashlib.sha1(genotype_key(genotype).encode()).hexdigest()[:12]


def searched_networks(config: dict[str, Any]) -> dict[str, Any]:
    """The networks and inputs a search config searches: what tells two cached searches apart."""
    return {"channels": list(config["search"]["channels"]), "stem_stride": config["search"]["stem_stride"],
            "resolution": config["data"]["resolution"], "beam_angles": config["data"]["beam_angles"]}


def progress_lines(label: str) -> Progress:
    """A search's progress as a line on stderr at every tenth of each phase (a search takes 20-50 min here)."""
    started = time.perf_counter()

    def report(phase: str, done: int, total: int) -> None:
        if total > 0 and done % max(1, total // 10) == 0:
            print(f"{label}: {phase} {done}/{total} ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    return report


def run_variant(name: str, config: dict[str, Any], data: SearchData, sample: list[dict[str, Any]],
                search_seed: int) -> dict[str, Any]:
    """One search of variant ``name``; ``search_seed`` sets its initialisation, batches and paths."""
    strategy, options = parse_searcher(name)
    data = dataclasses.replace(data, seed=search_seed)
    settings = config["search"]
    space = SearchSpace.from_config(config)
    device = resolve_device(config["device"])
    budget = Budget(supernet_steps=settings["supernet_steps"], lr=settings["lr"], batch_size=settings["batch_size"],
                    max_sweeps=settings["max_sweeps"], device=device)
    torch.manual_seed(search_seed)
    started = time.perf_counter()
    result = get_strategy(strategy, **options).search(space, data, budget, progress_lines(f"{name}, seed {search_seed}"))
    seconds = time.perf_counter() - started
    evaluator = Evaluator(data, device=device)
    # the best found at the full widths: the stand-alone recipe trains those (K-shot also ranks narrower ones)
    best = next(entry for entry in result.ranked if entry.get("channels", list(space.channels)) == list(space.channels))
    return {"variant": name, "strategy": strategy, "options": options, "search_seed": search_seed,
            "networks": searched_networks(config),
            "search_seconds": seconds, **result.counts,
            "sample_estimates": [evaluator.evaluate(result.path({"genotype": g})) for g in sample],
            "best": {"genotype": best["genotype"], "estimated_dose_score": best["estimated_dose_score"],
                     **architecture_cost(best["genotype"], list(space.channels), config["data"]["resolution"],
                                       in_channels=space.in_channels, stem_stride=space.stem_stride)}}


def cached(path: Path, compute) -> dict[str, Any]:  # noqa: ANN001
    if path.is_file():
        return json.loads(path.read_text())
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as temporary:
        temporary.write_text(json.dumps(value, indent=2) + "\n")
    return value


def standalone_runs(args: argparse.Namespace, recipe: Recipe, truth_file: dict[str, Any],
                    results: dict[str, list[dict[str, Any]]]) -> tuple[dict[str, list[dict[str, Any]]], int]:
    """Every search's best found trained with the recipe's seeds (the ground truth's own runs where it has them,
    else cached ones; with ``--search-only`` nothing is trained): the runs done, by architecture id, and how many
    are left. The runs go variant by variant, so that a table split over sessions completes a row at a time."""
    known = {architecture_id(a["genotype"]): a["runs"] for a in truth_file["architectures"]}
    shard, shards = (int(part) for part in args.shard.split("/"))
    to_train = {(architecture_id(r["best"]["genotype"]), seed): r["best"]["genotype"]
                for searches in results.values() for r in searches for seed in args.seeds}  # in the variants' order
    runs: dict[str, list[dict[str, Any]]] = {}
    left = 0
    for position, ((key, seed), genotype) in enumerate(to_train.items()):
        run = next((r for r in known.get(key, []) if r["seed"] == seed), None)
        path = args.out / "standalone" / f"{key}_seed{seed}.json"
        if run is None and (path.is_file() or (position % shards == shard and not args.search_only)):
            folder = Path("runs") / "nas_comparison" / args.out.name / f"{key}_seed{seed}"  # checkpoints: not results
            run = cached(path, lambda genotype=genotype, seed=seed, folder=folder: recipe.run(genotype, seed, folder))
        if run is None:
            left += 1
        else:
            runs.setdefault(key, []).append(run)
    if left:
        print(f"{left} stand-alone runs are left{'' if args.search_only else ' to other shards'}", file=sys.stderr)
    return runs, left


def comparison_settings(recipe: Recipe, sample: list[dict[str, Any]], config: dict[str, Any]) -> dict[str, Any]:
    """What every result cached in an output folder depends on: the stand-alone recipe, the sample the estimates
    are of (in order), and the search's budget, grid and networks. Not the threads, device or pack paths (a GPU
    run reads the same patients from 32-HU packs; each run records where it trained)."""
    data = config["data"]
    return {"recipe": recipe.describe(), "sample": [architecture_id(genotype) for genotype in sample],
            "seed": config["seed"],
            "data": {key: data[key] for key in ("resolution", "augment", "beam_angles", "beam_rotation")},
            "search": {key: value for key, value in config["search"].items()
                       if key not in ("strategy", "options", "teachers", "diversity_weight", "pool")}}


def check_settings(parser: argparse.ArgumentParser, out: Path, settings: dict[str, Any]) -> None:
    """Refuse an output folder whose cached searches and runs were made with other settings; record them in a
    new one."""
    path = out / SETTINGS_FILE
    if path.is_file():
        recorded = json.loads(path.read_text())
        if recorded != settings:
            differ = sorted(key for key in {*recorded, *settings} if recorded.get(key) != settings.get(key))
            parser.error(f"{out} holds results of other settings ({', '.join(differ)} differ; {path}): "
                         "give another output folder")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as temporary:
        temporary.write_text(json.dumps(settings, indent=2) + "\n")


def distinct_runs(searches: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The stand-alone runs of the searches' finds, each once: two searches that found the same architecture
    share its runs, which would otherwise count twice."""
    runs: dict[tuple[str, int], dict[str, Any]] = {}
    for r in searches:
        for run in r["best"]["standalone"]:
            runs.setdefault((architecture_id(r["best"]["genotype"]), run["seed"]), run)
    return list(runs.values())


def variant_effect(results: dict[str, list[dict[str, Any]]], seeds: list[int]) -> tuple[float, float] | None:
    """Do the variants' finds train differently? A one-way ANOVA of the finds' seed means (each find trained
    with every seed, so the seeds' shared effect cancels) grouped by variant — the variant effect tested against
    the spread between finds of one variant; None until two variants have every run."""
    groups = []
    for searches in results.values():
        if all(len({run["seed"] for run in r["best"]["standalone"]}) == len(seeds) for r in searches):
            finds = {architecture_id(r["best"]["genotype"]): statistics.mean(run["dose_score"] for run in r["best"]["standalone"])
                     for r in searches}  # a find two searches share counts once
            if len(finds) > 1:
                groups.append(list(finds.values()))
    if len(groups) < 2:
        return None
    anova = f_oneway(*groups)
    return float(anova.statistic), float(anova.pvalue)


def mean_spread(values: list[float], digits: int = 3) -> str:
    """Mean ± sample SD (nan for one value, or where a value is nan)."""
    spread = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
    return f"{float(np.mean(values)):.{digits}f} ± {spread:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--config", type=Path)
    parser.add_argument("--standalone", type=Path, required=True, help="the ground truth (benchmarks/nas_standalone.py)")
    parser.add_argument("--variants", nargs="+", type=parse_searcher_label, default=VARIANTS,
                        help="strategies, each name[:option=value,...]")
    parser.add_argument("--supernet-networks", choices=("search", "truth"), default="search",
                        help="search: the config's widths, stem stride, grid and inputs; truth: the ground truth's "
                             "own networks and inputs (its networks record)")
    parser.add_argument("--search-seeds", type=int, nargs="+", default=[0],
                        help="each variant searched once per seed; the table gives the mean ± SD over them")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="stand-alone seeds of the best found")
    add_recipe_arguments(parser)
    parser.add_argument("--search-only", action="store_true")
    parser.add_argument("--shard", default="0/1", help="i/n: this process trains every n-th stand-alone run from i")
    args = parser.parse_args()
    try:
        recipe = Recipe.from_args(args)
    except ValueError as error:
        parser.error(str(error))
    truth_file = json.loads(args.standalone.read_text())
    if truth_file["recipe"] != recipe.describe():
        parser.error(f"{args.standalone} was trained with another recipe ({truth_file['recipe']}); "
                     f"give its --steps/--lr/--resolution/--augment or --recipe-config")
    overrides = [f"threads={args.threads}", f"data.train={recipe.train}", f"data.validation={recipe.validation}",
                 "data.augment=false"]
    if args.supernet_networks == "truth":
        if "networks" not in truth_file:
            parser.error(f"{args.standalone} has no record of its networks: --supernet-networks truth needs one")
        networks = truth_file["networks"]
        overrides += [f"data.resolution={networks['resolution']}", f"data.beam_angles={json.dumps(networks['beam_angles'])}",
                      f"search.channels={json.dumps(networks['channels'])}", f"search.stem_stride={networks['stem_stride']}"]
    config = load_config(args.config, overrides, defaults=SEARCH_DEFAULTS)
    if len(config["search"]["channels"]) != len(recipe.channels):  # the best found is trained with the recipe's widths
        parser.error(f"search.channels {config['search']['channels']} and the recipe's widths {list(recipe.channels)} "
                     "have different depths: the best found could not be trained stand-alone")
    torch.set_num_threads(args.threads)
    architectures, _, scores = seed_table(truth_file, args.seeds)  # the truth over the finds' own seeds
    if len(architectures) < 3:
        parser.error(f"{args.standalone}: fewer than 3 architectures with a run of every seed {args.seeds}")
    sample = [a["genotype"] for a in architectures]
    per_seed = {seed: [float(score) for score in scores[:, column]] for column, seed in enumerate(args.seeds)}
    truth = [float(score) for score in scores.mean(axis=1)]
    check_settings(parser, args.out, comparison_settings(recipe, sample, config))
    data: SearchData | None = None
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in args.variants}  # one search per search seed
    for name, search_seed in itertools.product(args.variants, args.search_seeds):
        def search(name: str = name, search_seed: int = search_seed) -> dict[str, Any]:
            nonlocal data
            if data is None:  # read once, expanded once: the ground truth's data
                data = SearchData.from_config(config["data"], seed=config["seed"],
                                              validation_patients=config["search"]["validation_patients"])
            print(f"searching: {name}, seed {search_seed}", file=sys.stderr, flush=True)
            return run_variant(name, config, data, sample, search_seed)
        found = cached(args.out / "search" / f"{file_name(name)}_seed{search_seed}.json", search)
        if found.get("networks") != searched_networks(config):
            parser.error(f"{args.out} holds a {name} search of other networks ({found.get('networks')}): "
                         "give another output folder")
        results[name].append(found)
    for searches in results.values():
        for r in searches:
            low, high = bootstrap_interval(r["sample_estimates"], truth)
            r["kendall_tau_b"] = {"mean": tau_b(r["sample_estimates"], truth), "interval": [low, high],
                                  "per_seed": [tau_b(r["sample_estimates"], per_seed[seed]) for seed in args.seeds]}
    runs, left = standalone_runs(args, recipe, truth_file, results)
    print(f"ground truth: {len(sample)} architectures, {truth_file['recipe']}; search budget "
          f"search.supernet_steps {config['search']['supernet_steps']} at {config['data']['resolution']}^3, "
          f"widths {config['search']['channels']}, stem stride {config['search']['stem_stride']}, "
          f"{config['search']['validation_patients']} validation patients for the estimates")
    print(f"{len(args.search_seeds)} search seed(s) per variant; mean ± SD over them, the best found's dose over "
          f"every stand-alone run of every search's best")
    print(f"{'variant':<22} {'search min':>11} {'fwd passes':>10} {'sampled':>8} {'evaluated':>9} {'tau-b':>11} "
          f"{'per search':>16} {'best est.':>9} {'best dose':>13} {'best DVH':>8} {'params':>9} {'GMACs':>6}")
    for name, searches in results.items():
        for r in searches:
            r["best"]["standalone"] = runs.get(architecture_id(r["best"]["genotype"]), [])
        taus = [r["kendall_tau_b"]["mean"] for r in searches]
        best_runs = distinct_runs(searches)
        average = lambda key: statistics.mean(r[key] for r in searches)  # noqa: E731
        expected = len({architecture_id(r["best"]["genotype"]) for r in searches}) * len(args.seeds)
        if len(best_runs) == expected:
            best_dose = mean_spread([b["dose_score"] for b in best_runs])
            best_dvh = f"{statistics.mean(b['dvh_score'] for b in best_runs):.3f}"
        else:  # a row's stand-alone columns wait for all of its runs
            best_dose, best_dvh = f"{len(best_runs)}/{expected} runs" if best_runs else "-", "-"
        print(f"{name:<22} {mean_spread([r['search_seconds'] / 60 for r in searches], 1):>11} "
              f"{searches[0]['training_forward_passes']:>10} {average('sampled_architectures'):>8.0f} "
              f"{average('evaluated_architectures'):>9.0f} {mean_spread(taus, 2):>11} "
              f"{' '.join(f'{t:.2f}' for t in taus):>16} "
              f"{statistics.mean(r['best']['estimated_dose_score'] for r in searches):>9.3f} "
              f"{best_dose:>13} {best_dvh:>8} "
              f"{statistics.mean(r['best']['parameters'] for r in searches):>9.0f} "
              f"{statistics.mean(r['best']['macs'] for r in searches) / 1e9:>6.2f}")
    effect = variant_effect(results, args.seeds)
    if effect is not None:
        print(f"do the variants' finds train differently? one-way ANOVA of the finds' seed means by variant "
              f"(complete rows): F = {effect[0]:.2f}, p = {effect[1]:.2f}")
    # How the finds were trained: a CPU without native bf16 trains in fp32, the truth's own runs may not have.
    trained = Counter(f"{run.get('precision', 'precision not recorded')} on {run.get('hardware', run['device'])}"
                      for found in runs.values() for run in found)
    if trained:
        print(f"stand-alone runs of the finds: {'; '.join(f'{n} {how}' for how, n in sorted(trained.items()))}")
    # Do the searches' errors cancel? The mean rank every search gives each architecture, against the truth.
    consensus = [float(r) for r in np.mean([rankdata(r["sample_estimates"]) for searches in results.values()
                                             for r in searches], axis=0)]
    consensus_tau = {"mean": tau_b(consensus, truth), "interval": list(bootstrap_interval(consensus, truth)),
                     "per_seed": [tau_b(consensus, per_seed[seed]) for seed in args.seeds]}
    print(f"consensus of all {sum(map(len, results.values()))} searches (mean rank of their estimates): tau-b "
          f"{consensus_tau['mean']:.2f} (95 % interval {consensus_tau['interval'][0]:.2f} … "
          f"{consensus_tau['interval'][1]:.2f}; per seed {' '.join(f'{t:.2f}' for t in consensus_tau['per_seed'])})")
    summary = {"ground_truth": truth_file["recipe"], "consensus_kendall_tau_b": consensus_tau, "search": config, "search_seeds": args.search_seeds,
               "standalone_complete": left == 0, "results": results, "truth_mean": truth, "truth_per_seed": per_seed,
               "variant_effect_anova": None if effect is None else {"F": effect[0], "p": effect[1]}}
    (args.out / "comparison.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
