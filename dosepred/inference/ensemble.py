"""An ensemble of models: its prediction is the members' mean, its uncertainty their voxel-wise spread (std).

An ensemble folder holds ``ensemble.json``: ``{"members": ["models/teacher-1", "runs/teacher-2/best", ...]}``
(paths relative to the folder, or shipped model names).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from dosepred.io.patient import Patient
from dosepred.inference.predictor import ModelError, Predictor

ENSEMBLE_FILE = "ensemble.json"


class EnsemblePredictor:
    """Predicts with every member; same interface as ``Predictor``."""

    def __init__(self, members: list[Predictor]) -> None:
        if len(members) < 2:
            raise ModelError("an ensemble needs at least two members")
        self.members = members

    def predict(self, patient: Patient, *, tta: bool = True) -> np.ndarray:
        return self.predict_with_uncertainty(patient, tta=tta)[0]

    def predict_with_uncertainty(self, patient: Patient, *, tta: bool = True) -> tuple[np.ndarray, np.ndarray]:
        doses = np.stack([member.predict(patient, tta=tta) for member in self.members])
        return doses.mean(axis=0), doses.std(axis=0)


def load_ensemble(folder: Path, *, device: torch.device, resolve, amp: bool = True) -> EnsemblePredictor:  # noqa: ANN001
    """The ensemble described by ``folder/ensemble.json``; ``resolve`` turns a member name into a folder."""
    try:
        members = json.loads((folder / ENSEMBLE_FILE).read_text())["members"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise ModelError(f"{folder / ENSEMBLE_FILE}: invalid ensemble ({error})") from None
    paths = [folder / m if (folder / m).exists() else resolve(m) for m in members]
    return EnsemblePredictor([Predictor.from_model_dir(path, device=device, amp=amp) for path in paths])
