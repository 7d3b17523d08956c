"""Shipped models: ``models/<name>/`` folders, and which one is the default."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from dosepred.inference.ensemble import ENSEMBLE_FILE, EnsemblePredictor, load_ensemble
from dosepred.inference.predictor import CONFIG_FILE, ModelError, Predictor

#: The models/ folder of this repository (override with DOSEPRED_MODELS).
MODELS_DIR = Path(os.environ.get("DOSEPRED_MODELS", Path(__file__).resolve().parents[2] / "models"))
#: The best shipped model; predict, demo and the viewer use it unless told otherwise.
DEFAULT_MODEL = "unet-beams-128"


def shipped_models() -> list[str]:
    if not MODELS_DIR.is_dir():
        return []
    return sorted(p.name for p in MODELS_DIR.iterdir() if (p / CONFIG_FILE).is_file() or (p / ENSEMBLE_FILE).is_file())


def resolve_model(name_or_path: str | None = None) -> Path:
    """A model folder from a shipped model's name or a path; None means the default model."""
    name_or_path = name_or_path or DEFAULT_MODEL
    path = Path(name_or_path)
    if path.exists():
        return path
    if (MODELS_DIR / name_or_path).is_dir():
        return MODELS_DIR / name_or_path
    raise ModelError(f"no model {name_or_path!r}: not a path, and not among the shipped models in {MODELS_DIR} "
                     f"({', '.join(shipped_models()) or 'none'})")


def load_predictor(name_or_path: str | None, *, device: torch.device, amp: bool = True) -> Predictor | EnsemblePredictor:
    """A single model or an ensemble (a folder with ensemble.json), by name or path; ``amp``: the bf16 fast path
    where the device has one."""
    folder = resolve_model(name_or_path)
    if (folder / ENSEMBLE_FILE).is_file():
        return load_ensemble(folder, device=device, resolve=resolve_model, amp=amp)
    return Predictor.from_model_dir(folder, device=device, amp=amp)
