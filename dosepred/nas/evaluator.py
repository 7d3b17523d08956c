"""Search data and the evaluator: a path's estimated validation dose score at the working resolution.

The estimate is the OpenKBP dose score computed on the working grid (e.g. 32^3 or 64^3) rather than on
128^3: per patient, sum |reference - prediction| / possible-dose voxels, in Gy, prediction zeroed
outside the mask. It ranks architectures; stand-alone training then gives the real score.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dosepred.io import sources
from dosepred.data.augment import Augmentation
from dosepred.data.dataset import PatientSamples
from dosepred.data.transforms import REFERENCE_DOSE_GY
from dosepred.nas.space import genotype_key


@dataclass
class SearchData:
    """Training samples (augmented) and one stacked validation batch at the working resolution."""

    train: PatientSamples
    validation: dict[str, torch.Tensor]
    seed: int = 0

    @classmethod
    def from_config(cls, data: dict, *, seed: int = 0, validation_patients: int | None = None) -> SearchData:
        train = PatientSamples.from_source(data["train"], resolution=data["resolution"],
                                           augmentation=Augmentation() if data["augment"] else None)
        paths = sources.find_patients(Path(data["validation"]))[:validation_patients]
        validation = PatientSamples(paths, resolution=data["resolution"])
        return cls(train, validation.batch(range(len(validation)), None), seed)


class Evaluator:
    """Runs a network on the validation batch (in chunks) and scores it."""

    def __init__(self, data: SearchData, *, device: torch.device, chunk: int = 8) -> None:
        self.batch = {key: value.to(device) for key, value in data.validation.items()}
        self.mask = self.batch["possible_dose_mask"]
        self.reference = self.batch["dose"] * REFERENCE_DOSE_GY
        self.chunk = chunk

    @torch.inference_mode()
    def predict(self, network: nn.Module) -> torch.Tensor:
        """Predicted dose (Gy) of every validation patient, zero outside the mask."""
        was_training = network.training
        network.eval()
        images = self.batch["image"]
        outputs = [network(images[i : i + self.chunk]) for i in range(0, len(images), self.chunk)]
        network.train(was_training)
        return torch.cat(outputs).float().clamp(min=0) * REFERENCE_DOSE_GY * self.mask

    def score(self, prediction: torch.Tensor) -> float:
        per_patient = (prediction - self.reference).abs().sum(dim=(1, 2, 3, 4)) / self.mask.sum(dim=(1, 2, 3, 4))
        return float(per_patient.mean())

    def evaluate(self, network: nn.Module) -> float:
        return self.score(self.predict(network))


class ScoreBook:
    """Estimated scores of architectures, each computed once: ``book(entry)`` -> Gy. With reference predictions
    (``add_reference``), an entry's record also holds its relative distance to each (``relative_distances``,
    ``relative_distance``)."""

    def __init__(self, evaluator: Evaluator, path: Callable[[dict[str, Any]], nn.Module]) -> None:
        self.evaluator, self.path = evaluator, path
        self.entries: dict[str, dict[str, Any]] = {}
        self.references: list[torch.Tensor] = []

    def record(self, entry: dict[str, Any]) -> dict[str, Any]:
        """The entry's record, predicting once more only when it lacks a distance to a newer reference."""
        key = genotype_key(entry)
        known = self.entries.get(key)
        if known is not None and len(known.get("relative_distances", [])) == len(self.references):
            return known
        prediction = self.evaluator.predict(self.path(entry))
        record = known or {**entry, "estimated_dose_score": self.evaluator.score(prediction)}
        if self.references:
            record["relative_distances"] = [relative_distance(prediction, reference, self.evaluator.mask)
                                            for reference in self.references]
        self.entries[key] = record
        return record

    def __call__(self, entry: dict[str, Any]) -> float:
        return self.record(entry)["estimated_dose_score"]

    def add_reference(self, entry: dict[str, Any]) -> None:
        """Measure every later record's distance to this entry's prediction too."""
        self.references.append(self.evaluator.predict(self.path(entry)))

    def ranked(self) -> list[dict[str, Any]]:
        return sorted(self.entries.values(), key=lambda entry: entry["estimated_dose_score"])


def distance_gy(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean |a - b| (Gy) over the possible-dose voxels: how differently two networks predict."""
    return float((a - b).abs().sum() / mask.sum())


def relative_distance(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    """Sum |a - b| over the sum of their mean, (a + b) / 2, over the possible-dose voxels: how far apart two
    predictions are relative to their dose (0.2: a fifth of it), the distance of LE-NAS's diversity hinge."""
    return float(((a - b).abs() * mask).sum() / ((a + b) / 2 * mask).sum().clamp(min=1e-6))
