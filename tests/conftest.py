"""Shared fixtures: where the real OpenKBP data lives, and a skip marker for when it does not."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

#: ../shared/openkbp beside the repository (override with DOSEPRED_OPENKBP).
OPENKBP = Path(os.environ.get("DOSEPRED_OPENKBP", Path(__file__).resolve().parents[2] / "shared" / "openkbp"))
SAMPLE = OPENKBP / "sample"
SAMPLE_PATIENTS = [SAMPLE / "train-pats" / "pt_66", SAMPLE / "train-pats" / "pt_196", SAMPLE / "validation-pats" / "pt_201"]

requires_openkbp = pytest.mark.skipif(
    not SAMPLE.is_dir(), reason=f"OpenKBP sample data not found at {SAMPLE} (set DOSEPRED_OPENKBP)"
)


@pytest.fixture(scope="session")
def phantom_small():
    """The phantom on a 32^3 grid: fast for tests that need a whole patient."""
    from data_prep.phantom import make_phantom

    return make_phantom((32, 32, 32))


@pytest.fixture(scope="session")
def sample_patients():
    from data_prep.openkbp_csv import read_patient

    if not SAMPLE.is_dir():
        pytest.skip(f"OpenKBP sample data not found at {SAMPLE}")
    return [read_patient(path) for path in SAMPLE_PATIENTS]
