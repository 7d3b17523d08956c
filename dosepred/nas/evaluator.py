"""Search data and the evaluator: a path's estimated validation dose score at the working resolution.

The estimate is the OpenKBP dose score computed on the working grid (e.g. 32^3 or 64^3) rather than on
128^3: per patient, sum |reference - prediction| / possible-dose voxels, in Gy, prediction zeroed
outside the mask. It ranks architectures; stand-alone training then gives the real score.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dosepred.io import sources
from dosepred.data.augment import Augmentation
from dosepred.data.dataset import ExpandedSamples, PatientSamples
from dosepred.data.transforms import REFERENCE_DOSE_GY
from dosepred.devices import fast_path
from dosepred.io.files import atomic_file
from dosepred.nas.space import genotype_key


#: A split that is never augmented is expanded once at its working resolution when it fits in this many bytes,
#: instead of for every batch (at 128^3 it would take eight times the memory of 64^3).
EXPAND_LIMIT_BYTES = 6 * 2**30


@dataclass
class SearchData:
    """Training samples (augmented, or expanded once when not) and one stacked validation batch at the working
    resolution."""

    train: PatientSamples | ExpandedSamples
    validation: dict[str, torch.Tensor]
    seed: int = 0

    @classmethod
    def from_config(cls, data: dict, *, seed: int = 0, validation_patients: int | None = None) -> SearchData:
        """The splits of a ``data`` config section, with beam channels where it names ``beam_angles``."""
        beams = data.get("beam_angles")
        train = PatientSamples.from_source(data["train"], resolution=data["resolution"],
                                           augmentation=Augmentation.for_data(data), beam_angles=beams)
        if not data["augment"] and expanded_bytes(train) <= EXPAND_LIMIT_BYTES:
            train = ExpandedSamples(train)
        paths = sources.find_patients(Path(data["validation"]))[:validation_patients]
        validation = PatientSamples(paths, resolution=data["resolution"], beam_angles=beams)
        return cls(train, validation.batch(range(len(validation)), None), seed)


def expanded_bytes(samples: PatientSamples) -> int:
    """The memory the split takes once expanded at its working resolution."""
    one = samples.batch([0], None)
    return len(samples) * sum(volume.numel() * volume.element_size() for volume in one.values())


class Evaluator:
    """Runs a network on the validation batch (in chunks) and scores it, in bf16 with channels-last inputs where
    the device computes bf16 natively (``dosepred.devices.fast_path``): about 1.7x faster on this project's CPU,
    estimates moved by hundredths of a Gy, their order kept (``benchmarks/estimate_precision.py``; README)."""

    chunk = 8  # validation patients a forward pass

    def __init__(self, data: SearchData, *, device: torch.device, fast: bool | None = None) -> None:
        self.batch = {key: value.to(device) for key, value in data.validation.items()}
        self.amp = fast_path(device) if fast is None else fast
        if self.amp:
            self.batch["image"] = self.batch["image"].contiguous(memory_format=torch.channels_last_3d)
        self.mask = self.batch["possible_dose_mask"]
        self.reference = self.batch["dose"] * REFERENCE_DOSE_GY

    @torch.inference_mode()
    def predict(self, network: nn.Module) -> torch.Tensor:
        """Predicted dose (Gy) of every validation patient, zero outside the mask."""
        was_training = network.training
        network.eval()
        images = self.batch["image"]
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=self.amp):
            outputs = [network(images[i : i + self.chunk]) for i in range(0, len(images), self.chunk)]
        network.train(was_training)
        return torch.cat(outputs).float().clamp(min=0) * REFERENCE_DOSE_GY * self.mask

    def score(self, prediction: torch.Tensor) -> float:
        per_patient = (prediction - self.reference).abs().sum(dim=(1, 2, 3, 4)) / self.mask.sum(dim=(1, 2, 3, 4))
        return float(per_patient.mean())

    def evaluate(self, network: nn.Module) -> float:
        return self.score(self.predict(network))


class ScoreStore:
    """A JSON-lines file of measured estimates (a score and hinge distances per entry), valid for one
    ``fingerprint``: opened with another, it is started afresh. A line cut short by an interruption is dropped
    when the file is opened, so the records appended after it stay readable."""

    def __init__(self, path: Path, fingerprint: str) -> None:
        self.path = path
        self.saved: dict[str, dict[str, Any]] = {}  # key -> {"record": ..., "distances": ...}
        header = json.dumps({"fingerprint": fingerprint})
        text = path.read_text() if path.is_file() else ""
        lines = text.splitlines()
        if lines and lines[0] == header:
            kept = [line for line in lines[1:] if _json_line(line) is not None]
            for saved in map(json.loads, kept):
                self.saved[saved.pop("key")] = saved
            if len(kept) < len(lines) - 1 or not text.endswith("\n"):
                self._rewrite([header, *kept])
        else:
            self._rewrite([header])

    def save(self, key: str, record: dict[str, Any], distances: dict[str, float]) -> None:
        with self.path.open("a") as file:
            file.write(json.dumps({"key": key, "record": record, "distances": distances}) + "\n")

    def _rewrite(self, lines: list[str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(self.path) as partial:
            partial.write_text("".join(line + "\n" for line in lines))


class ScoreBook:
    """Estimated scores of architectures, each computed once: ``book(entry)`` -> Gy. With reference predictions
    (``add_reference``), an entry's record also holds its relative distance to each (``relative_distances``,
    ``relative_distance``). With a ``store``, every prediction's score and distances are saved as they are
    measured and an entry the store holds is not predicted again (a resumed search scores nothing twice); only
    the entries asked for enter ``entries`` and ``ranked()``."""

    def __init__(self, evaluator: Evaluator, path: Callable[[dict[str, Any]], nn.Module], *,
                 store: ScoreStore | None = None) -> None:
        self.evaluator, self.path, self.store = evaluator, path, store
        self.entries: dict[str, dict[str, Any]] = {}
        self.distances: dict[str, dict[str, float]] = {}  # entry key -> reference key -> relative distance
        self.references: list[tuple[str, torch.Tensor]] = []

    def record(self, entry: dict[str, Any]) -> dict[str, Any]:
        """The entry's record, predicting once more only when it lacks a distance to a newer reference."""
        key = genotype_key(entry)
        if key not in self.entries and self.store is not None and key in self.store.saved:
            saved = self.store.saved[key]
            self.entries[key], self.distances[key] = dict(saved["record"]), dict(saved["distances"])
        known = self.entries.get(key)
        distances = self.distances.setdefault(key, {})
        missing = [(name, reference) for name, reference in self.references if name not in distances]
        if known is None or missing:
            prediction = self.evaluator.predict(self.path(entry))
            known = known or {**entry, "estimated_dose_score": self.evaluator.score(prediction)}
            for name, reference in missing:
                distances[name] = relative_distance(prediction, reference, self.evaluator.mask)
            self.entries[key] = known
            if self.store is not None:
                self.store.save(key, {k: v for k, v in known.items() if k != "relative_distances"}, distances)
        if self.references:
            known["relative_distances"] = [distances[name] for name, _ in self.references]
        return known

    def __call__(self, entry: dict[str, Any]) -> float:
        return self.record(entry)["estimated_dose_score"]

    def add_reference(self, entry: dict[str, Any]) -> None:
        """Measure every later record's distance to this entry's prediction too."""
        self.references.append((genotype_key(entry), self.evaluator.predict(self.path(entry))))

    def ranked(self) -> list[dict[str, Any]]:
        return sorted(self.entries.values(), key=lambda entry: entry["estimated_dose_score"])


#: Raise when what an estimate means or how it is computed changes: older stores are then started afresh.
STORE_VERSION = 2  # 2: bf16 on the fast path


def fingerprint(weights: nn.Module, evaluator: Evaluator, context: str) -> str:
    """A digest of what every estimate depends on: the weights the paths run with, the validation batch, and
    ``context`` (the strategy and its settings, which may choose how a path runs)."""
    digest = hashlib.sha256(f"{STORE_VERSION} bf16={evaluator.amp} {context}".encode())
    tensors = dict(weights.state_dict()) | {f"validation.{name}": value for name, value in evaluator.batch.items()}
    for name in sorted(tensors):
        value = tensors[name].detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}{value.dtype}{tuple(tensors[name].shape)}".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _json_line(line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


def distance_gy(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean |a - b| (Gy) over the possible-dose voxels: how differently two networks predict."""
    return float((a - b).abs().sum() / mask.sum())


def relative_distance(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    """Sum |a - b| over the sum of their mean, (a + b) / 2, over the possible-dose voxels: how far apart two
    predictions are relative to their dose (0.2: a fifth of it), the distance of LE-NAS's diversity hinge."""
    return float(((a - b).abs() * mask).sum() / ((a + b) / 2 * mask).sum().clamp(min=1e-6))
