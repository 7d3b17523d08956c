"""Patients as compact samples in memory; batches are expanded and augmented on the training device."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import torch

from dosepred.io import sources
from dosepred.data.augment import Augmentation
from dosepred.data.transforms import model_inputs, patient_to_sample
from dosepred.progress import Progress


class PatientSamples:
    """The patients of one split, read once and kept as compact samples (``patient_to_sample``)."""

    def __init__(self, paths: list[Path], *, resolution: int, augmentation: Augmentation | None = None,
                 beam_angles: Sequence[float] | None = None, device: torch.device | str = "cpu",
                 workers: int = 0, progress: Progress | None = None) -> None:
        """Read ``paths`` in ``workers`` threads (at least one: decoding and geometry run in C and release the GIL)
        and keep the samples on ``device``: on a GPU the whole split lives in its memory and batches never
        cross the bus. ``progress("patients", done, total)`` follows the reading."""
        self.paths = paths
        self.resolution = resolution
        self.augmentation = augmentation
        load = partial(_load, beam_angles=beam_angles)
        with ThreadPoolExecutor(max(1, workers)) as pool:
            self.samples = []
            for sample in pool.map(load, paths):
                self.samples.append({key: value.to(device) for key, value in sample.items()})
                if progress is not None:
                    progress("patients", len(self.samples), len(paths))
        self.attached: dict[str, list[torch.Tensor]] = {}

    @classmethod
    def from_source(cls, source: str | Path, **kwargs) -> PatientSamples:
        return cls(sources.find_patients(Path(source)), **kwargs)

    def __len__(self) -> int:
        return len(self.samples)

    def attach(self, key: str, volumes: list[torch.Tensor]) -> None:
        """Give each sample one more volume at the working resolution, augmented with the others."""
        if len(volumes) != len(self):
            raise ValueError(f"{len(volumes)} volumes for {len(self)} samples")
        self.attached[key] = volumes

    def inputs(self, index: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Sample ``index`` expanded at the working resolution, not augmented, with a batch axis."""
        return self.batch([index], None, device)

    def batch(self, indices: Sequence[int], seeds: Sequence[int] | None,
              device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """The samples at ``indices`` on ``device``, sample i augmented with ``seeds[i]`` (None: not at all)."""
        compact = {key: torch.stack([self.samples[i][key] for i in indices]).to(device)
                   for key in self.samples[indices[0]]}
        compact |= {key: torch.stack([volumes[i] for i in indices]).to(device) for key, volumes in self.attached.items()}
        if seeds is not None and self.augmentation is not None:
            compact = self.augmentation(compact, list(seeds))
        return model_inputs(compact, resolution=self.resolution) | {key: compact[key] for key in self.attached}


class ExpandedSamples:
    """A split expanded once at its working resolution, never augmented: for short trainings at a reduced
    resolution (architecture rankings), where expanding the full-grid samples for every batch would cost more
    than the step itself. Holds every input in memory as float32 (169 patients at 64^3: about 4 GB)."""

    def __init__(self, samples: PatientSamples) -> None:
        self.resolution = samples.resolution
        self.volumes = [samples.batch([index], None) for index in range(len(samples))]

    def __len__(self) -> int:
        return len(self.volumes)

    def batch(self, indices: Sequence[int], seeds: Sequence[int] | None,
              device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """The samples at ``indices`` on ``device``; ``seeds`` are ignored: nothing is augmented."""
        return {key: torch.cat([self.volumes[i][key] for i in indices]).to(device) for key in self.volumes[indices[0]]}


def _load(path: Path, *, beam_angles: Sequence[float] | None) -> dict[str, torch.Tensor]:
    return patient_to_sample(sources.read_patient(path), beam_angles=beam_angles)
