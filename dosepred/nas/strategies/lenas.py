"""LE-NAS: train a supernet with uniform path sampling, then search block by block exhaustively.

Starting from the reference architecture, each block in turn tries every one of its choices with the
other blocks at their current best, on the validation batch, and keeps the best; sweeps repeat until no
block changes (or ``max_sweeps``). Every evaluated architecture is kept with its estimated score.
"""

from __future__ import annotations

from collections.abc import Callable

from dosepred.nas.evaluator import Evaluator, SearchData
from dosepred.nas.space import SearchSpace, genotype_key
from dosepred.nas.strategies.base import Budget, SearchResult, Strategy, register_strategy
from dosepred.nas.supernet import make_supernet, train_supernet
from dosepred.networks.searched import Genotype


@register_strategy
class LENAS(Strategy):
    name = "lenas"

    def search(self, space: SearchSpace, data: SearchData, budget: Budget,
               progress: Callable[[str, int, int], None] | None = None) -> SearchResult:
        report = progress or (lambda phase, done, total: None)
        supernet = make_supernet(space)
        losses = train_supernet(supernet, space, data, steps=budget.supernet_steps, lr=budget.lr,
                                batch_size=budget.batch_size, device=budget.device,
                                on_step=lambda step, loss: report("supernet", step, budget.supernet_steps))
        evaluator = Evaluator(data, device=budget.device)
        scores: dict[str, tuple[Genotype, float]] = {}

        def estimate(genotype: Genotype) -> float:
            key = genotype_key(genotype)
            if key not in scores:
                scores[key] = (genotype, evaluator.evaluate(supernet, genotype))
            return scores[key][1]

        current = space.reference()
        log = [{"phase": "supernet", "steps": budget.supernet_steps, "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:]))}]
        per_sweep = sum(len(space.block_choices(kind)) for kind, _ in space.blocks)
        for sweep in range(budget.max_sweeps):
            changed = []
            for b, block in enumerate(space.blocks):
                best = min(space.neighbours(current, block), key=estimate)
                if estimate(best) < estimate(current):
                    current = best
                    changed.append(f"{block[0]} {block[1]}")
                report(f"sweep {sweep + 1}", (b + 1) * per_sweep // len(space.blocks), per_sweep)
            log.append({"phase": f"sweep {sweep + 1}", "changed_blocks": changed, "best": estimate(current),
                        "evaluated": len(scores)})
            if not changed:
                break
        ranked = sorted(scores.values(), key=lambda item: item[1])
        return SearchResult([{"genotype": g, "estimated_dose_score": s} for g, s in ranked], log, supernet)
