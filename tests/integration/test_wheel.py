"""A wheel carries the default model: `dosepred demo` runs from a wheel install, away from this checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(*command: str | Path, **options) -> subprocess.CompletedProcess:  # noqa: ANN003
    return subprocess.run([str(part) for part in command], capture_output=True, text=True, check=True, **options)


def test_a_wheel_install_runs_the_demo_with_its_own_default_model(tmp_path: Path) -> None:
    pytest.importorskip("setuptools", reason="building the wheel needs setuptools in this environment")
    source = tmp_path / "source"  # a copy, so the build leaves nothing in the checkout
    shutil.copytree(ROOT / "dosepred", source / "dosepred", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist",
        source)
    wheel = next((tmp_path / "dist").glob("dosepred-*.whl"))
    run(sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", tmp_path / "site", wheel)

    environment = {key: value for key, value in os.environ.items() if key != "DOSEPRED_MODELS"}
    environment["PYTHONPATH"] = str(tmp_path / "site")
    where = run(sys.executable, "-c", "import dosepred.models as m; print(m.MODELS_DIR); print(m.shipped_models())",
                cwd=tmp_path, env=environment).stdout.split("\n")
    assert Path(where[0]).is_relative_to(tmp_path / "site")
    assert where[1] == "['unet-beams-128']"  # the default only: the other shipped models stay in the repository
    run(sys.executable, "-m", "dosepred.cli", "demo", "-o", tmp_path / "demo", "--device", "cpu",
        cwd=tmp_path, env=environment)
    assert {path.name for path in (tmp_path / "demo").iterdir()} == {"phantom_dose.nii.gz", "phantom_dvh.png",
                                                                     "phantom_metrics.csv"}
