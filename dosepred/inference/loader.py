"""The one loader of dose models: a dose model folder or an ensemble of them, by name or path."""

from __future__ import annotations

from pathlib import Path

import torch

from dosepred.inference.ensemble import EnsemblePredictor
from dosepred.inference.predictor import Predictor
from dosepred.models import ModelError, read_model, resolve_model


def load_predictor(name_or_path: str | Path | None, *, device: torch.device,
                   amp: bool = True) -> Predictor | EnsemblePredictor:
    """A dose model or an ensemble, by shipped name or path (None: the default model); ``amp``: the bf16 fast
    path where the device has one.

    Raises:
        ModelError: no such model, or a folder that is not a dose model or an ensemble of them.
    """
    folder = read_model(resolve_model(name_or_path))
    if folder.kind == "dose":
        return Predictor.from_folder(folder, device=device, amp=amp)
    if folder.kind != "ensemble":
        raise ModelError(f"{folder.path}: a {folder.kind} model, not a dose model")
    members = folder.config.get("members")
    if not isinstance(members, list) or not all(isinstance(member, str) for member in members):
        raise ModelError(f"{folder.path}: an ensemble's config lists its members: {{\"members\": [\"...\", ...]}}")
    # A member is a folder beside the ensemble's, or a shipped model's name.
    paths = [folder.path / member if (folder.path / member).is_dir() else resolve_model(member) for member in members]
    return EnsemblePredictor([Predictor.from_folder(read_model(path, "dose"), device=device, amp=amp) for path in paths])
