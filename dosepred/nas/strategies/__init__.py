"""Search strategies, one file each, behind ``Strategy.search(space, data, budget) -> SearchResult``."""

from dosepred.nas.strategies.base import Budget, SearchResult, Strategy, check_strategy, get_strategy, strategy_names

__all__ = ["Budget", "SearchResult", "Strategy", "check_strategy", "get_strategy", "strategy_names"]

# Importing a strategy's module registers it.
from dosepred.nas.strategies import fpnas, gold, kshot, lenas, random_search  # noqa: E402,F401
