"""Random search with weight sharing (Li & Talwalkar, 2019): the baseline every strategy must beat.

The supernet is trained exactly as LE-NAS trains it (uniform path sampling); then architectures drawn
uniformly from the space are scored with it. By default it scores as many as LE-NAS may at most
(``max_sweeps`` full block-wise sweeps), so both spend the same evaluation budget.
"""

from __future__ import annotations

import numpy as np

from dosepred.nas.evaluator import SearchData
from dosepred.nas.space import SearchSpace
from dosepred.nas.strategies.base import Budget, SearchResult, Strategy, register_strategy, silent
from dosepred.progress import Progress
from dosepred.nas.strategies.lenas import train_supernet
from dosepred.nas.supernet import paths_of


@register_strategy
class RandomSearch(Strategy):
    name = "random"
    options = {"architectures": None}  # how many to score; None: as many as LE-NAS's max_sweeps allow

    def search(self, space: SearchSpace, data: SearchData, budget: Budget, progress: Progress | None = None) -> SearchResult:
        report = progress or silent
        count = self.settings["architectures"]
        if count is None:
            count = budget.max_sweeps * sum(len(space.block_choices(kind)) for kind, _ in space.blocks)
        if count < 1:  # before the supernet's training, not after it
            raise ValueError("random search scores no architecture: give search.max_sweeps >= 1 or "
                             "search.options.architectures >= 1")
        supernet, trained, counts = train_supernet(space, data, budget, report)

        path = paths_of(supernet)
        book = self.score_book(data, budget, path, supernet)
        rng = np.random.default_rng([data.seed, 2])
        for done in range(count):
            book({"genotype": space.sample(rng)})
            report("random architectures", done + 1, count)
        log = [trained, {"phase": "random", "drawn": count, "best": book.ranked()[0]["estimated_dose_score"]}]
        counts["evaluated_architectures"] = len(book.entries)
        return SearchResult(book.ranked(), path, log, counts, supernet)
