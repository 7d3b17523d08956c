"""The data layer stays torch-free: it must import (and so run in a converter or a viewer) without torch."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import importlib, pkgutil, sys
import dosepred.io
for module in pkgutil.iter_modules(dosepred.io.__path__):
    importlib.import_module(f"dosepred.io.{module.name}")
heavy = sorted(name for name in ("torch", "monai") if name in sys.modules)
print(",".join(heavy))
"""


def test_the_data_layer_imports_without_torch() -> None:
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"dosepred.io imported {result.stdout.strip()}"
