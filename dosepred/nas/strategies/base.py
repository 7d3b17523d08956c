"""The one interface every search strategy implements, and the registry that finds them by name."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from dosepred.nas.evaluator import SearchData
from dosepred.nas.space import SearchSpace


@dataclass(frozen=True)
class Budget:
    """How much a strategy may spend: supernet training and evaluation, on one device."""

    supernet_steps: int = 1000
    lr: float = 2e-3
    batch_size: int = 2
    max_sweeps: int = 3
    device: torch.device = torch.device("cpu")


@dataclass
class SearchResult:
    """Evaluated architectures, best (lowest estimated dose score) first, with the search's log."""

    ranked: list[dict[str, Any]]  # {"genotype": ..., "estimated_dose_score": float}
    log: list[dict[str, Any]] = field(default_factory=list)
    supernet: nn.Module | None = None  # the trained weights behind the estimates, when there are any


class Strategy(ABC):
    """A search strategy: spend the budget, return ranked genotypes with estimated scores."""

    name: ClassVar[str]

    def __init__(self, **options: Any) -> None:
        self.options = options

    @abstractmethod
    def search(self, space: SearchSpace, data: SearchData, budget: Budget,
               progress: Callable[[str, int, int], None] | None = None) -> SearchResult:
        """Search ``space``; ``progress(phase, done, total)`` reports long work."""


_STRATEGIES: dict[str, type[Strategy]] = {}


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    _STRATEGIES[cls.name] = cls
    return cls


def get_strategy(name: str, **options: Any) -> Strategy:
    if name not in _STRATEGIES:
        raise KeyError(f"unknown strategy {name!r}; available: {', '.join(strategy_names())}")
    return _STRATEGIES[name](**options)


def strategy_names() -> list[str]:
    return sorted(_STRATEGIES)
