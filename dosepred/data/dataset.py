"""Patients as cached training samples, with augmentation seeded per sample so a run can resume exactly."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from monai.data import CacheDataset
from monai.transforms import Compose, RandAffined

from data_prep import sources
from data_prep.patient import GRID_SHAPE
from dosepred.data.transforms import VOLUME_KEYS, RandFlipLeftRightd, patient_to_sample, resize_to


def load_sample(item: dict[str, str]) -> dict[str, object]:
    return patient_to_sample(sources.read_patient(item["path"]))


def deterministic_transforms(resolution: int) -> Compose:
    """Load a patient and bring it to the working grid (nothing to do at full resolution)."""
    steps: list = [load_sample]
    if resolution != GRID_SHAPE[0]:
        steps.append(resize_to(resolution))
    return Compose(steps)


def augmentation(resolution: int) -> Compose:
    """Left-right mirroring (parotids swapped), rotations up to 5 degrees, shifts up to 3% of the field."""
    return Compose([
        RandFlipLeftRightd(prob=0.5),
        RandAffined(keys=VOLUME_KEYS, prob=0.5, rotate_range=(math.radians(5),) * 3,
                    translate_range=(0.03 * resolution,) * 3, mode=("bilinear", "bilinear", "nearest", "bilinear"),
                    padding_mode="zeros", allow_missing_keys=True),
    ])


class PatientSamples:
    """The patients of one split, preprocessed once and kept in memory (MONAI CacheDataset)."""

    def __init__(self, paths: list[Path], *, resolution: int, augment: bool, cache_rate: float = 1.0,
                 num_workers: int = 0) -> None:
        self.paths = paths
        self.dataset = CacheDataset([{"path": str(p)} for p in paths], transform=deterministic_transforms(resolution),
                                    cache_rate=cache_rate, num_workers=num_workers or None, progress=False)
        self.augment = augmentation(resolution) if augment else None
        self.attached: dict[str, list[torch.Tensor]] = {}

    @classmethod
    def from_source(cls, source: str | Path, **kwargs) -> PatientSamples:
        return cls(sources.find_patients(Path(source)), **kwargs)

    def __len__(self) -> int:
        return len(self.dataset)

    def collate(self, indices, seed_of) -> dict[str, torch.Tensor]:  # noqa: ANN001 - index list, index -> seed
        """A batch of the samples at ``indices``, each augmented with the seed ``seed_of(position)``."""
        return stack([self.sample(int(index), seed_of(position)) for position, index in enumerate(indices)])

    def attach(self, key: str, volumes: list[torch.Tensor]) -> None:
        """Give each sample one more volume (one of VOLUME_KEYS), augmented together with the others."""
        if len(volumes) != len(self):
            raise ValueError(f"{len(volumes)} volumes for {len(self)} samples")
        self.attached[key] = volumes

    def sample(self, index: int, seed: int) -> dict[str, object]:
        """Sample ``index``, augmented with randomness drawn from ``seed`` alone."""
        item = self.dataset[index] | {key: volumes[index] for key, volumes in self.attached.items()}
        if self.augment is not None:
            self.augment.set_random_state(seed=seed)
            item = self.augment(item)
        return item


def stack(samples: list[dict[str, object]]) -> dict[str, torch.Tensor]:
    """Collate samples into a batch of plain tensors."""
    keys = [key for key in VOLUME_KEYS if key in samples[0]]
    return {key: torch.stack([torch.as_tensor(s[key]).as_subclass(torch.Tensor) for s in samples]) for key in keys}
