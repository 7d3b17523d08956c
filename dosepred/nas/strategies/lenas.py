"""LE-NAS: train a supernet with uniform path sampling, then search it block by block exhaustively."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from dosepred.nas.blockwise import blockwise_search
from dosepred.nas.evaluator import Evaluator, ScoreBook, SearchData
from dosepred.nas.space import SearchSpace, genotype_key
from dosepred.nas.strategies.base import Budget, Progress, SearchResult, Strategy, register_strategy, silent
from dosepred.nas.supernet import paths_of, train_supernet
from dosepred.networks.searched import Genotype, UNetSpaceNet


def uniform_supernet(space: SearchSpace, data: SearchData, budget: Budget,
                     report: Progress) -> tuple[UNetSpaceNet, dict[str, Any], dict[str, int]]:
    """A supernet trained with one uniformly sampled path per step, its log entry and its counts."""
    drawn: set[str] = set()  # after a resume: the paths drawn since

    def sampler(rng: np.random.Generator) -> Genotype:
        genotype = space.sample(rng)
        drawn.add(genotype_key(genotype))
        return genotype

    with contextlib.ExitStack() as stack:
        run = budget.run_dir / "supernet" if budget.run_dir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        supernet, losses = train_supernet(run, space, data, steps=budget.supernet_steps, lr=budget.lr,
                                          batch_size=budget.batch_size, device=budget.device, sampler=sampler,
                                          resume=budget.resume, on_step=lambda step, loss: report("supernet", step, budget.supernet_steps))
    log = {"phase": "supernet", "steps": budget.supernet_steps, "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:]))}
    return supernet, log, {"training_forward_passes": budget.supernet_steps, "sampled_architectures": len(drawn)}


@register_strategy
class LENAS(Strategy):
    name = "lenas"

    def search(self, space: SearchSpace, data: SearchData, budget: Budget, progress: Progress | None = None) -> SearchResult:
        report = progress or silent
        supernet, trained, counts = uniform_supernet(space, data, budget, report)

        path = paths_of(supernet)
        book = ScoreBook(Evaluator(data, device=budget.device), path)
        _, sweeps = blockwise_search(space, lambda genotype: book({"genotype": genotype}),
                                     max_sweeps=budget.max_sweeps, report=report)
        counts["evaluated_architectures"] = len(book.entries)
        return SearchResult(book.ranked(), path, [trained, *sweeps], counts, supernet)
