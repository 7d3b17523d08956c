"""A registry of networks built from plain config dicts, so a network is data (name + JSON)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register_network(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: make ``create_network(name, **cfg)`` call the decorated builder."""

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _BUILDERS:
            raise ValueError(f"network {name!r} is registered twice")
        _BUILDERS[name] = builder
        return builder

    return decorate


def create_network(name: str, **cfg: object) -> nn.Module:
    """Build a registered network from its config."""
    if name not in _BUILDERS:
        raise KeyError(f"unknown network {name!r}; registered: {', '.join(sorted(_BUILDERS))}")
    return _BUILDERS[name](**cfg)


def network_names() -> list[str]:
    return sorted(_BUILDERS)
