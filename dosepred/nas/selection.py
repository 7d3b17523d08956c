"""Choosing K teachers that are strong and diverse.

Rule (greedy): the best-scoring architecture first; then, repeatedly, the candidate (of the pool the caller
gives: the search takes the ``search.pool`` best by estimated score) that minimises ``score - lambda * d_min``, where ``d_min`` is its
smallest prediction distance to the teachers already chosen (mean |dose difference| over the
possible-dose voxels of the validation patients, in Gy, as is the score). lambda = 0 gives the plain
top K; a larger lambda trades estimated score for different predictions.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from dosepred.nas.evaluator import distance_gy


@dataclass
class Selection:
    chosen: list[int]  # indices into the ranked list
    diversity: float  # mean pairwise prediction distance of the chosen set (Gy)
    top_k: list[int]
    top_k_diversity: float


def mean_pairwise_distance(indices: list[int], predictions: list[torch.Tensor], mask: torch.Tensor) -> float:
    pairs = list(itertools.combinations(indices, 2))
    return sum(distance_gy(predictions[a], predictions[b], mask) for a, b in pairs) / max(1, len(pairs))


def describe_set(indices: list[int], predictions: list[torch.Tensor], mask: torch.Tensor,
                 score: Callable[[torch.Tensor], float]) -> dict[str, float]:
    """How diverse a set of networks is and what that buys: their mean pairwise prediction distance (Gy) and the
    estimated score of their ensemble (the mean of their predictions), to read beside the best member's."""
    return {"mean_pairwise_distance_gy": mean_pairwise_distance(indices, predictions, mask),
            "ensemble_estimated_dose_score": score(torch.stack([predictions[i] for i in indices]).mean(dim=0)),
            "best_member_estimated_dose_score": min(score(predictions[i]) for i in indices)}


def select_teachers(scores: list[float], predictions: list[torch.Tensor], mask: torch.Tensor, *, k: int,
                    diversity_weight: float) -> Selection:
    """Greedy strong-and-diverse choice among candidates sorted best first (see the module docstring)."""
    if not scores:
        raise ValueError("no candidates to choose teachers from")
    k = min(k, len(scores))
    candidates = range(len(scores))
    chosen = [0]
    distance: dict[tuple[int, int], float] = {}

    def distance_to(c: int, s: int) -> float:
        if (c, s) not in distance:
            distance[c, s] = distance_gy(predictions[c], predictions[s], mask)
        return distance[c, s]

    while len(chosen) < k:
        def utility(c: int) -> float:
            return scores[c] - diversity_weight * min(distance_to(c, s) for s in chosen)

        chosen.append(min((c for c in candidates if c not in chosen), key=utility))
    top_k = list(range(k))
    return Selection(chosen, mean_pairwise_distance(chosen, predictions, mask), top_k,
                     mean_pairwise_distance(top_k, predictions, mask))
