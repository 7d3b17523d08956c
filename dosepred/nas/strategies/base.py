"""The one interface every search strategy implements, and the registry that finds them by name."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from dosepred.nas.evaluator import Evaluator, ScoreBook, ScoreStore, SearchData, fingerprint
from dosepred.nas.space import SearchSpace
from dosepred.progress import Progress

#: ``progress(phase, done, total)``: how a strategy reports long work.


@dataclass(frozen=True)
class Budget:
    """How much a strategy may spend: supernet training and evaluation, on one device."""

    supernet_steps: int = 1000
    lr: float = 2e-3
    batch_size: int = 2
    max_sweeps: int = 3
    device: torch.device = torch.device("cpu")
    #: Where supernet training keeps its run (checkpoints, metrics.csv); None: a temporary folder.
    run_dir: Path | None = None
    resume: bool = False  # continue the supernet run in run_dir from its last checkpoint


@dataclass
class SearchResult:
    """Evaluated architectures, best (lowest estimated dose score) first, and how to run any architecture
    with the search's trained weights.

    ``ranked`` entries: ``{"genotype": ..., "estimated_dose_score": float}``, plus ``"channels"`` when the
    strategy also searched widths. ``path(entry)`` is a module running that architecture (any entry of the
    space, ranked or not) with the weights the estimates came from.
    """

    ranked: list[dict[str, Any]]
    path: Callable[[dict[str, Any]], nn.Module]
    log: list[dict[str, Any]] = field(default_factory=list)
    #: training_forward_passes (architecture x batch forwards while training), sampled_architectures
    #: (distinct architectures trained on), evaluated_architectures (scored on the validation batch)
    counts: dict[str, int] = field(default_factory=dict)
    weights: nn.Module | None = None  # saved as supernet.safetensors when there are any
    #: architectures the strategy itself picked (LE-NAS's diversity-hinge searches): they join the teacher pool
    found: list[dict[str, Any]] = field(default_factory=list)


class Strategy(ABC):
    """A search strategy: spend the budget, return ranked genotypes with estimated scores.

    Each strategy declares its ``options`` (name -> default); ``search.options`` in the config sets them.
    """

    name: ClassVar[str]
    options: ClassVar[dict[str, Any]] = {}

    def __init__(self, **options: Any) -> None:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise ValueError(f"strategy {self.name!r} has no option {', '.join(unknown)}; "
                             f"its options: {', '.join(sorted(self.options)) or 'none'}")
        self.settings = {**self.options, **options}

    def score_book(self, data: SearchData, budget: Budget, path: Callable[[dict[str, Any]], nn.Module],
                   weights: nn.Module) -> ScoreBook:
        """The book that scores ``path``s run with ``weights``; with a run folder its estimates are kept in
        ``scores.jsonl`` there as they are measured (``ScoreStore``), so a resumed search scores nothing twice."""
        evaluator = Evaluator(data, device=budget.device)
        if budget.run_dir is None:
            return ScoreBook(evaluator, path)
        context = f"{self.name} {json.dumps(self.settings, sort_keys=True, default=str)}"
        store = ScoreStore(budget.run_dir / "scores.jsonl", fingerprint(weights, evaluator, context))
        return ScoreBook(evaluator, path, store=store)

    @abstractmethod
    def search(self, space: SearchSpace, data: SearchData, budget: Budget, progress: Progress | None = None) -> SearchResult:
        """Search ``space``; ``progress(phase, done, total)`` reports long work."""


_STRATEGIES: dict[str, type[Strategy]] = {}


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    _STRATEGIES[cls.name] = cls
    return cls


def check_strategy(name: str) -> None:
    """Raise ValueError for a name no strategy has."""
    if name not in _STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; available: {', '.join(strategy_names())}")


def get_strategy(name: str, **options: Any) -> Strategy:
    check_strategy(name)
    return _STRATEGIES[name](**options)


def strategy_names() -> list[str]:
    return sorted(_STRATEGIES)


def silent(phase: str, done: int, total: int) -> None:
    """The progress callback that reports nothing."""
