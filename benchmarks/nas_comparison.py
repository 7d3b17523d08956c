"""One comparison of the search strategies on the same data and budget, with their ablations.

Per variant (strategy + options): search wall time, training forward passes, sampled and evaluated
architectures; Kendall tau-b between the strategy's weight-sharing estimates and stand-alone scores on one
shared sample of architectures drawn uniformly from the space; the best found architecture's validation
dose score after the same short stand-alone training; its parameters and MACs (one input at the working
resolution).

Work is cached in OUT (search/<variant>.json, standalone/<architecture>.json), so the script can be rerun,
split across processes (``--variants``, ``--shard i/n``) and stopped between steps.

Usage: python -m benchmarks.nas_comparison OUT --config configs/search_compare_cpu.yaml
           [--variants lenas random ...] [--sample 8] [--steps 300] [--threads 1] [--search-only] [--shard 0/1]
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.nas_ranking import tau_b
from benchmarks.nas_standalone import SharedDataTrainer
from dosepred.engine.config import SEARCH_DEFAULTS, load_config
from dosepred.devices import resolve_device
from dosepred.nas.cost import architecture_cost
from dosepred.nas.evaluator import Evaluator, SearchData
from dosepred.nas.space import SearchSpace, genotype_key
from dosepred.nas.strategies import Budget, get_strategy

#: name -> (strategy, options): the strategies and the ablations the comparison asks for.
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "lenas": ("lenas", {}),
    "random": ("random", {}),
    "kshot": ("kshot", {}),
    "kshot-k1": ("kshot", {"k": 1}),
    "gold": ("gold", {}),
    "gold-hard": ("gold", {"pruning": "hard"}),
    "fpnas": ("fpnas", {}),
    "fpnas-fixed": ("fpnas", {"adaptive": False}),
}


def architecture_id(entry: dict[str, Any]) -> str:
    return hashlib.sha1(genotype_key({"genotype": entry["genotype"], "channels": entry["channels"]}).encode()).hexdigest()[:12]


def shared_sample(space: SearchSpace, count: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng([seed, 7])
    return [{"genotype": space.sample(rng), "channels": list(space.channels)} for _ in range(count)]


def run_variant(name: str, config: dict[str, Any], data: SearchData, sample: list[dict[str, Any]]) -> dict[str, Any]:
    strategy, options = VARIANTS[name]
    settings = config["search"]
    space = SearchSpace(tuple(settings["channels"]))
    device = resolve_device(config["device"])
    budget = Budget(supernet_steps=settings["supernet_steps"], lr=settings["lr"], batch_size=settings["batch_size"],
                    max_sweeps=settings["max_sweeps"], device=device)
    torch.manual_seed(config["seed"])
    started = time.perf_counter()
    result = get_strategy(strategy, **options).search(space, data, budget)
    seconds = time.perf_counter() - started
    evaluator = Evaluator(data, device=device)
    best = result.ranked[0]
    best_entry = {"genotype": best["genotype"], "channels": best.get("channels", list(space.channels))}
    return {"variant": name, "strategy": strategy, "options": options, "search_seconds": seconds, **result.counts,
            "sample_estimates": [evaluator.evaluate(result.path(entry)) for entry in sample],
            "best": {**best_entry, "estimated_dose_score": best["estimated_dose_score"],
                     **architecture_cost(best_entry["genotype"], best_entry["channels"], config["data"]["resolution"])}}


def train_standalone(entry: dict[str, Any], config: dict[str, Any], steps: int, threads: int, out: Path) -> dict[str, Any]:
    base = load_config(None, [f"threads={threads}", "device=cpu", f"seed={config['seed']}", f"optim.steps={steps}",
                              f"validate_every={steps}", f"checkpoint_every={steps}", "optim.warmup_steps=20"])
    base["data"] = copy.deepcopy(config["data"])
    base["data"]["max_validation_patients"] = None  # the whole validation split, at 128^3
    base["network"] = {"name": "searched", "genotype": entry["genotype"], "channels": entry["channels"]}
    started = time.perf_counter()
    history = SharedDataTrainer(base, out).fit()
    return {**entry, "standalone_dose_score": history[-1]["val_dose_score"],
            "standalone_dvh_score": history[-1]["val_dvh_score"], "seconds": time.perf_counter() - started}


def cached(path: Path, compute) -> dict[str, Any]:  # noqa: ANN001
    if path.is_file():
        return json.loads(path.read_text())
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".part")
    temporary.write_text(json.dumps(value, indent=2) + "\n")
    temporary.replace(path)
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--config", type=Path)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--sample", type=int, default=8, help="architectures in the shared sample")
    parser.add_argument("--steps", type=int, default=300, help="stand-alone training steps")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--search-only", action="store_true")
    parser.add_argument("--shard", default="0/1", help="i/n: this process trains every n-th architecture from i")
    args = parser.parse_args()
    config = load_config(args.config, [f"threads={args.threads}"], defaults=SEARCH_DEFAULTS)
    torch.set_num_threads(args.threads)
    space = SearchSpace(tuple(config["search"]["channels"]))
    sample = shared_sample(space, args.sample, config["seed"])
    data: SearchData | None = None
    results = {}
    for name in args.variants:
        def search(name: str = name) -> dict[str, Any]:
            nonlocal data
            data = data or SearchData.from_config(config["data"], seed=config["seed"],
                                                  validation_patients=config["search"]["validation_patients"])
            print(f"searching: {name}", file=sys.stderr, flush=True)
            return run_variant(name, config, data, sample)
        results[name] = cached(args.out / "search" / f"{name}.json", search)
    if args.search_only:
        return

    shard, shards = (int(part) for part in args.shard.split("/"))
    to_train = {architecture_id(entry): entry for entry in sample}
    to_train |= {architecture_id(r["best"]): {"genotype": r["best"]["genotype"], "channels": r["best"]["channels"]}
                 for r in results.values()}
    standalone = {}
    for position, (key, entry) in enumerate(sorted(to_train.items())):
        path = args.out / "standalone" / f"{key}.json"
        if position % shards == shard or path.is_file():
            standalone[key] = cached(path, lambda entry=entry, key=key: train_standalone(
                entry, config, args.steps, args.threads, args.out / "runs" / key))
    if len(standalone) < len(to_train):
        print(f"{len(to_train) - len(standalone)} stand-alone runs are left to other shards", file=sys.stderr)
        return
    truth = [standalone[architecture_id(entry)]["standalone_dose_score"] for entry in sample]
    print(f"shared sample: {len(sample)} architectures, {args.steps} stand-alone steps each at "
          f"{config['data']['resolution']}^3, scored on the whole validation split (128^3); search budget "
          f"{config['search']['supernet_steps']} forward passes, {config['search']['validation_patients']} validation patients")
    header = (f"{'variant':<12} {'search min':>10} {'fwd passes':>10} {'sampled':>8} {'evaluated':>9} {'tau-b':>6} "
              f"{'best est.':>9} {'best dose':>9} {'best DVH':>8} {'params':>8} {'GMACs':>6}")
    print(header)
    for name, r in results.items():
        best = standalone[architecture_id(r["best"])]
        r["kendall_tau_b"] = tau_b(r["sample_estimates"], truth)
        r["best"] |= {"standalone_dose_score": best["standalone_dose_score"], "standalone_dvh_score": best["standalone_dvh_score"]}
        print(f"{name:<12} {r['search_seconds'] / 60:>10.1f} {r['training_forward_passes']:>10} "
              f"{r['sampled_architectures']:>8} {r['evaluated_architectures']:>9} {r['kendall_tau_b']:>6.2f} "
              f"{r['best']['estimated_dose_score']:>9.3f} {best['standalone_dose_score']:>9.3f} "
              f"{best['standalone_dvh_score']:>8.3f} {r['best']['parameters']:>8} {r['best']['macs'] / 1e9:>6.2f}")
    print("shared sample stand-alone dose scores (Gy): " + ", ".join(f"{score:.3f}" for score in truth))
    (args.out / "comparison.json").write_text(json.dumps({"results": results, "sample_scores": truth}, indent=2) + "\n")


if __name__ == "__main__":
    main()
