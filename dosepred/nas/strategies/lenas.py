"""LE-NAS: train a supernet with uniform path sampling, then search it block by block exhaustively."""

from __future__ import annotations

from typing import Any


from dosepred.nas.blockwise import blockwise_search
from dosepred.nas.evaluator import Evaluator, ScoreBook, SearchData
from dosepred.nas.space import SearchSpace
from dosepred.nas.strategies.base import Budget, Progress, SearchResult, Strategy, register_strategy, silent
from dosepred.nas.supernet import SupernetTrainer, fit_supernet, paths_of
from dosepred.networks.searched import UNetSpaceNet


def uniform_supernet(space: SearchSpace, data: SearchData, budget: Budget,
                     report: Progress) -> tuple[UNetSpaceNet, dict[str, Any], dict[str, int]]:
    """A supernet trained with one uniformly sampled path per step, its log entry and its counts."""
    trainer, losses = fit_supernet(
        lambda config, run, resume: SupernetTrainer(config, run, space=space, data=data, resume=resume),
        run_dir=budget.run_dir / "supernet" if budget.run_dir else None, resume=budget.resume, seed=data.seed,
        device=budget.device, steps=budget.supernet_steps, lr=budget.lr, batch_size=budget.batch_size,
        on_step=lambda trainer: report("supernet", trainer.step, budget.supernet_steps))
    log = {"phase": "supernet", "steps": budget.supernet_steps, "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:]))}
    return trainer.network, log, {"training_forward_passes": budget.supernet_steps,
                                  "sampled_architectures": trainer.sampled_architectures()}


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
