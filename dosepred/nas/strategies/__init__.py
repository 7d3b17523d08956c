"""Search strategies, one file each, behind ``Strategy.search(space, data, budget) -> SearchResult``."""

from dosepred.nas.strategies.base import Budget, SearchResult, Strategy, get_strategy, strategy_names

__all__ = ["Budget", "SearchResult", "Strategy", "get_strategy", "strategy_names"]

import dosepred.nas.strategies.lenas  # noqa: E402,F401  (registers the strategies)
