"""The ``dosepred`` command, one module per stage, each a thin face over library functions."""

from dosepred.cli import data, detect, fewshot, predict, training  # noqa: F401 - each registers its commands
from dosepred.cli.common import app

__all__ = ["app"]
