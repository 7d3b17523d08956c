"""An ensemble of models: its prediction is the members' mean, its uncertainty their voxel-wise spread (std).

An ensemble model folder's config.json: ``{"kind": "ensemble", "members": ["teacher_1", "unet-beams-128", ...]}``
(folders beside it, or shipped model names); ``dosepred.inference.loader.load_predictor`` loads it.
"""

from __future__ import annotations

import numpy as np
import torch

from dosepred.io.patient import Patient
from dosepred.inference.predictor import Predictor
from dosepred.models import ModelError

class EnsemblePredictor:
    """Predicts with every member; same interface as ``Predictor``."""

    def __init__(self, members: list[Predictor]) -> None:
        if len(members) < 2:
            raise ModelError("an ensemble needs at least two members")
        self.members = members

    def predict(self, patient: Patient, *, tta: bool = True) -> np.ndarray:
        return self.predict_with_uncertainty(patient, tta=tta)[0]

    def predict_with_uncertainty(self, patient: Patient, *, tta: bool = True) -> tuple[np.ndarray, np.ndarray]:
        shared: dict[tuple, torch.Tensor] = {}  # members with the same grid and channels share the inputs
        doses = []
        for member in self.members:
            key = (member.resolution, tuple(member.beam_angles or ()), member.device)
            if key not in shared:
                shared[key] = member.inputs(patient)
            doses.append(member.predict(patient, tta=tta, inputs=shared[key]))
        return np.mean(doses, axis=0), np.std(doses, axis=0)
