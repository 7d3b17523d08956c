"""LE-NAS: train a supernet (one uniformly sampled path per step, or strict-fairness sampling), then search it
block by block exhaustively."""

from __future__ import annotations

from typing import Any


from dosepred.nas.blockwise import blockwise_search
from dosepred.nas.evaluator import SearchData
from dosepred.nas.space import SearchSpace
from dosepred.nas.strategies.base import Budget, SearchResult, Strategy, register_strategy, silent
from dosepred.progress import Progress
from dosepred.nas.supernet import FairSupernetTrainer, SupernetTrainer, fit_supernet, paths_of
from dosepred.networks.ops import SLOT_OPS
from dosepred.networks.searched import Genotype, UNetSpaceNet


#: Path sampling while the supernet trains -> its trainer and the forward passes of one step.
SAMPLING: dict[str, tuple[type[SupernetTrainer], int]] = {"uniform": (SupernetTrainer, 1),
                                                          "fair": (FairSupernetTrainer, len(SLOT_OPS))}


def train_supernet(space: SearchSpace, data: SearchData, budget: Budget, report: Progress,
                   sampling: str = "uniform") -> tuple[UNetSpaceNet, dict[str, Any], dict[str, int]]:
    """A supernet trained with ``sampling`` (see ``SAMPLING``), its log entry and its counts."""
    if sampling not in SAMPLING:
        raise ValueError(f"unknown path sampling {sampling!r}; choose from {', '.join(SAMPLING)}")
    trainer_class, passes = SAMPLING[sampling]
    steps = max(1, budget.supernet_steps // passes)  # the budget counts training forward passes
    trainer, losses = fit_supernet(
        lambda config, run, resume: trainer_class(config, run, space=space, data=data, resume=resume),
        run_dir=budget.run_dir / "supernet" if budget.run_dir else None, resume=budget.resume, seed=data.seed,
        device=budget.device, steps=steps, lr=budget.lr, batch_size=budget.batch_size,
        on_step=lambda trainer: report("supernet", trainer.step, steps))
    log = {"phase": "supernet", "sampling": sampling, "steps": steps,
           "final_loss": sum(losses[-20:]) / len(losses[-20:]) if losses else None}  # None: no step ran here
    return trainer.network, log, {"training_forward_passes": steps * passes,
                                  "sampled_architectures": trainer.sampled_architectures()}


@register_strategy
class LENAS(Strategy):
    """Options: ``sampling`` of the supernet's paths (``SAMPLING``); ``architectures``, how many block-wise
    searches run one after another: search j >= 2 minimises the estimated score (Gy) plus LE-NAS's diversity
    hinge, ``hinge_weight * sum_i max(0, diversity_margin - r_i)`` over the architectures i found before it, where
    r_i is the relative distance of the two predictions (``relative_distance``: mean |difference| over their mean
    dose, on the validation batch): it pushes the new prediction at least ``diversity_margin`` (a fifth) of the
    dose away from each earlier one. Margin, weight and distance follow the authors' code (hust-linyi/LENAS,
    ``U-NAS/loss.py``), where the hinge also enters the supernet's training loss against a trained reference
    network; here it shapes the search objective only. The found architectures join the pool the teachers are
    selected from (``SearchResult.found``)."""

    name = "lenas"
    options = {"sampling": "uniform", "architectures": 1, "diversity_margin": 0.2, "hinge_weight": 10.0}

    def search(self, space: SearchSpace, data: SearchData, budget: Budget, progress: Progress | None = None) -> SearchResult:
        report = progress or silent
        supernet, trained, counts = train_supernet(space, data, budget, report, self.settings["sampling"])

        path = paths_of(supernet)
        book = self.score_book(data, budget, path, supernet)
        found: list[dict[str, Any]] = []
        log = [trained]
        for number in range(self.settings["architectures"]):
            def objective(genotype: Genotype) -> float:
                record = book.record({"genotype": genotype})
                return record["estimated_dose_score"] + self.hinge(record)

            label = f"architecture {number + 1}, " if self.settings["architectures"] > 1 else ""
            best, sweeps = blockwise_search(space, objective, max_sweeps=budget.max_sweeps,
                                            report=lambda phase, done, total: report(label + phase, done, total))
            found.append(book.record({"genotype": best}))
            log += [{**sweep, "architecture": number + 1} for sweep in sweeps]
            if self.settings["architectures"] > 1:
                book.add_reference({"genotype": best})
        if len(found) > 1:  # each found architecture's score and its relative distance to every one found
            log.append({"phase": "found", "architectures": [
                {"estimated_dose_score": entry["estimated_dose_score"],
                 "relative_distances": book.record({"genotype": entry["genotype"]})["relative_distances"]}
                for entry in found]})
        counts["evaluated_architectures"] = len(book.entries)
        return SearchResult(book.ranked(), path, log, counts, supernet, found=[{"genotype": e["genotype"]} for e in found])

    def hinge(self, record: dict[str, Any]) -> float:
        """The diversity hinge of a record against the architectures found before it (0 for the first search)."""
        margin, weight = self.settings["diversity_margin"], self.settings["hinge_weight"]
        return weight * sum(max(0.0, margin - distance) for distance in record.get("relative_distances", []))
