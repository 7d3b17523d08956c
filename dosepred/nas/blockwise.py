"""Block-wise exhaustive search over a weight-sharing estimate (LE-NAS's search; K-shot NAS reuses it).

Starting from the reference architecture, each block in turn tries every one of its choices with the
other blocks at their current best, and keeps the best; sweeps repeat until no block changes (or
``max_sweeps``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dosepred.nas.space import SearchSpace
from dosepred.networks.searched import Genotype
from dosepred.progress import Progress


def blockwise_search(space: SearchSpace, estimate: Callable[[Genotype], float], *, max_sweeps: int,
                     report: Progress) -> tuple[Genotype, list[dict[str, Any]]]:
    """The best architecture found and the log of each sweep."""
    current = space.reference()
    log = []
    per_sweep = sum(len(space.block_choices(kind)) for kind, _ in space.blocks)
    for sweep in range(max_sweeps):
        changed = []
        for b, block in enumerate(space.blocks):
            best = min(space.neighbours(current, block), key=estimate)
            if estimate(best) < estimate(current):
                current = best
                changed.append(f"{block[0]} {block[1]}")
            report(f"sweep {sweep + 1}", (b + 1) * per_sweep // len(space.blocks), per_sweep)
        log.append({"phase": f"sweep {sweep + 1}", "changed_blocks": changed, "best": estimate(current)})
        if not changed:
            break
    return current, log
