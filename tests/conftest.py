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
    from dosepred.io.phantom import make_phantom

    return make_phantom((32, 32, 32))


@pytest.fixture(scope="session")
def sample_patients():
    from dosepred.io.openkbp_csv import read_patient

    if not SAMPLE.is_dir():
        pytest.skip(f"OpenKBP sample data not found at {SAMPLE}")
    return [read_patient(path) for path in SAMPLE_PATIENTS]


TINY_NETWORK = ["network.channels=[4,8]", "network.strides=[2]", "network.num_res_units=1"]


@pytest.fixture(scope="session")
def tiny_packs(tmp_path_factory):
    """Phantom patients on a 32^3 grid as pack files: three to train on, one to validate with."""
    from dosepred.io import pack
    from dosepred.io.phantom import make_phantom

    root = tmp_path_factory.mktemp("tiny")
    for split, count in (("train", 3), ("validation", 1)):
        for seed in range(count):
            patient = make_phantom((32, 32, 32), seed=seed)
            patient.id = f"pt_{split}{seed}"
            pack.write_patient(patient, root / split / f"{patient.id}.dpk")
    return root


def tiny_config(root, *extra: str) -> dict:
    from dosepred.engine.config import load_config

    return load_config(None, [f"data.train={root / 'train'}", f"data.validation={root / 'validation'}",
                              "data.resolution=32", "optim.steps=4", "optim.warmup_steps=1", "validate_every=2",
                              "checkpoint_every=2", *TINY_NETWORK, *extra])


@pytest.fixture(scope="session")
def tiny_model(tiny_packs, tmp_path_factory):
    """A model folder trained for a few steps on the tiny phantoms."""
    from dosepred.engine.trainer import Trainer

    run = tmp_path_factory.mktemp("run")
    Trainer(tiny_config(tiny_packs), run).fit()
    return run / "best"


@pytest.fixture(scope="session")
def two_output_model(tmp_path_factory):
    """An untrained model folder whose network has a second (uncertainty) output channel."""
    import torch

    from dosepred.models import WEIGHTS_FILE, write_model
    from dosepred.networks import create_network

    folder = tmp_path_factory.mktemp("two_output") / "model"
    network = {"name": "unet", "out_channels": 2, "channels": [4, 8], "strides": [2], "num_res_units": 1}
    torch.manual_seed(0)
    write_model(folder, "dose", {"network": network, "data": {"resolution": 32}},
                {WEIGHTS_FILE: create_network(**network).state_dict()})
    return folder


@pytest.fixture(scope="session")
def phantom_split(tmp_path_factory):
    """A split folder of two 128^3 phantom patients (pt_1, pt_2) in OpenKBP CSV format."""
    from dosepred.io import openkbp_csv
    from dosepred.io.phantom import make_phantom

    split = tmp_path_factory.mktemp("split")
    patient = make_phantom()
    for pid in ("pt_1", "pt_2"):
        patient.id = pid
        openkbp_csv.write_patient(patient, split / pid)
    return split
