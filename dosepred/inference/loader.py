"""The one loader of dose models: a dose model folder or an ensemble of them, by name or path."""

from __future__ import annotations

from pathlib import Path

import torch

from dosepred.inference.ensemble import EnsemblePredictor
from dosepred.inference.predictor import Predictor
from dosepred.models import MODELS_DIR, ModelError, read_model, resolve_model


MAX_MEMBERS = 16


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
    if not 2 <= len(members) <= MAX_MEMBERS or len(set(members)) != len(members):  # each one a network in memory
        raise ModelError(f"{folder.path}: an ensemble has 2 to {MAX_MEMBERS} members, each listed once")
    paths = [_member(folder.path, member) for member in members]
    return EnsemblePredictor([Predictor.from_folder(read_model(path, "dose"), device=device, amp=amp) for path in paths])


def _member(ensemble: Path, name: str) -> Path:
    """An ensemble's member: a folder beside its config (not a link), else a shipped model. Only plain names, so
    an ensemble loads the same weights wherever it is run and reaches no folder it does not hold."""
    if Path(name).name != name or name in ("", ".", ".."):
        raise ModelError(f"{ensemble}: member {name!r} must be a plain name (a folder beside the ensemble's "
                         "config.json, or a shipped model)")
    for candidate in (ensemble / name, MODELS_DIR / name):
        if candidate.is_dir() and not candidate.is_symlink():
            return candidate
    raise ModelError(f"{ensemble}: no member {name!r} beside the ensemble's config.json or among the shipped models")
