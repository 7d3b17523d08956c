"""dosepred.models: one model-folder format for every kind, and the shipped models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dosepred.models import (DEFAULT_MODEL, KINDS, MODELS_DIR, WEIGHTS_FILE, ModelError, read_model, resolve_model,
                             shipped_models, write_model)


def test_a_folder_round_trips_with_float16_storage(tmp_path: Path) -> None:
    state = {"weight": torch.randn(3, 4), "steps": torch.tensor([7]), "huge": torch.tensor([1e6])}
    write_model(tmp_path / "model", "dose", {"network": {"name": "unet"}}, {WEIGHTS_FILE: state},
                {"log.json": "[]\n"})
    folder = read_model(tmp_path / "model", "dose")
    assert folder.kind == "dose" and folder.config == {"network": {"name": "unet"}}
    weights = folder.weights()
    assert weights["weight"].dtype == torch.float32
    assert torch.equal(weights["weight"], state["weight"].half().float())  # stored as float16
    assert weights["huge"].item() == 1e6  # beyond float16's range: kept as it was
    assert torch.equal(weights["steps"], state["steps"])
    assert (tmp_path / "model" / "log.json").read_text() == "[]\n"


def test_every_refusal_says_why(tmp_path: Path) -> None:
    write_model(tmp_path / "detector", "detector", {}, {WEIGHTS_FILE: {"w": torch.zeros(1)}})
    with pytest.raises(ModelError, match="a detector model, where a dose model is needed"):
        read_model(tmp_path / "detector", "dose")
    (tmp_path / "pickle.pt").write_bytes(b"\x80\x04")
    with pytest.raises(ModelError, match="pickled checkpoints"):
        read_model(tmp_path / "pickle.pt")
    with pytest.raises(ModelError, match="no config.json"):
        read_model(tmp_path)
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text(json.dumps({"kind": "recipe"}))
    with pytest.raises(ModelError, match="'kind' is 'recipe'"):
        read_model(tmp_path / "odd")
    (tmp_path / "odd" / "config.json").write_text(json.dumps({"kind": "dose"}))
    with pytest.raises(ModelError, match="missing model.safetensors"):
        read_model(tmp_path / "odd")
    (tmp_path / "odd" / WEIGHTS_FILE).write_bytes(b"\0" * 64)
    with pytest.raises(ModelError, match="cannot load weights"):
        read_model(tmp_path / "odd").weights()
    with pytest.raises(ValueError, match="unknown model kind"):
        write_model(tmp_path / "new", "recipe", {}, {})
    assert not (tmp_path / "new").exists()


def test_the_shipped_models_are_folders_of_known_kinds() -> None:
    assert DEFAULT_MODEL in shipped_models()
    assert resolve_model(None) == MODELS_DIR / DEFAULT_MODEL
    for name in shipped_models():
        assert read_model(MODELS_DIR / name).kind in KINDS
    with pytest.raises(ModelError, match="no model 'nothing-here'"):
        resolve_model("nothing-here")
