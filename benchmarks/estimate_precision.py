"""What the fast path does to a search's estimates: paths of a trained supernet scored in fp32 and in bf16 with
channels-last inputs (``dosepred.nas.evaluator.Evaluator``), seconds per path and how far the estimates move.

Usage: python benchmarks/estimate_precision.py RUN [--architectures 24] [--threads 2]
  RUN: a ``dosepred search`` run folder (its config.yaml and supernet.safetensors; a plain weight-sharing supernet:
  lenas or random)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from scipy.stats import kendalltau

from dosepred.engine.config import SEARCH_DEFAULTS, load_config
from dosepred.nas.evaluator import Evaluator, SearchData
from dosepred.nas.space import SearchSpace
from dosepred.nas.supernet import SupernetPath, make_supernet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--architectures", type=int, default=24, help="paths drawn uniformly (seed 0)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config(args.run / "config.yaml", defaults=SEARCH_DEFAULTS)
    space = SearchSpace.from_config(config)
    supernet = make_supernet(space)
    supernet.load_state_dict(load_file(args.run / "supernet.safetensors"))
    data = SearchData.from_config(config["data"], seed=config["seed"],
                                  validation_patients=config["search"]["validation_patients"])
    rng = np.random.default_rng(0)
    genotypes = [space.sample(rng) for _ in range(args.architectures)]
    scores = {}
    for fast in (False, True):
        evaluator = Evaluator(data, device=torch.device("cpu"), fast=fast)
        started = time.perf_counter()
        scores[fast] = np.array([evaluator.evaluate(SupernetPath(supernet, genotype)) for genotype in genotypes])
        print(f"{'bf16 + channels-last' if fast else 'fp32':<21} {(time.perf_counter() - started) / len(genotypes):.2f} s "
              f"a path ({config['data']['resolution']}^3, {len(evaluator.reference)} patients, {args.threads} threads)")
    difference = np.abs(scores[True] - scores[False])
    print(f"{args.architectures} paths, fp32 estimates {scores[False].min():.3f}-{scores[False].max():.3f} Gy: bf16 moves "
          f"them by {difference.mean():.4f} Gy on average, at most {difference.max():.4f}; "
          f"Kendall tau fp32 vs bf16 {kendalltau(scores[False], scores[True]).statistic:.3f}")


if __name__ == "__main__":
    main()
