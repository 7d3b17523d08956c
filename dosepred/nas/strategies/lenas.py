"""LE-NAS: train a supernet with uniform path sampling, then search it block by block exhaustively."""

from __future__ import annotations

from typing import Any

from dosepred.nas.blockwise import blockwise_search
from dosepred.nas.evaluator import Evaluator, ScoreBook, SearchData
from dosepred.nas.space import SearchSpace
from dosepred.nas.strategies.base import Budget, Progress, SearchResult, Strategy, register_strategy, silent
from dosepred.nas.supernet import SupernetPath, make_supernet, train_supernet
from dosepred.networks.searched import UNetSpaceNet


def uniform_supernet(space: SearchSpace, data: SearchData, budget: Budget,
                     report: Progress) -> tuple[UNetSpaceNet, dict[str, Any]]:
    """A supernet trained with one uniformly sampled path per step, and its log entry."""
    supernet = make_supernet(space)
    losses = train_supernet(supernet, space, data, steps=budget.supernet_steps, lr=budget.lr,
                            batch_size=budget.batch_size, device=budget.device,
                            on_step=lambda step, loss: report("supernet", step, budget.supernet_steps))
    return supernet, {"phase": "supernet", "steps": budget.supernet_steps,
                      "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:]))}


@register_strategy
class LENAS(Strategy):
    name = "lenas"

    def search(self, space: SearchSpace, data: SearchData, budget: Budget, progress: Progress | None = None) -> SearchResult:
        report = progress or silent
        supernet, trained = uniform_supernet(space, data, budget, report)

        def path(entry: dict) -> SupernetPath:
            return SupernetPath(supernet, entry["genotype"])

        book = ScoreBook(Evaluator(data, device=budget.device), path)
        _, sweeps = blockwise_search(space, lambda genotype: book({"genotype": genotype}),
                                     max_sweeps=budget.max_sweeps, report=report)
        counts = {"training_forward_passes": budget.supernet_steps, "sampled_architectures": budget.supernet_steps,
                  "evaluated_architectures": len(book.entries)}
        return SearchResult(book.ranked(), path, [trained, *sweeps], counts, supernet)
