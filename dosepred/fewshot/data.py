"""Few-shot data: 2D axial CT patches around each structure, scikit-learn's digits, and the episode sampler.

A patch set is plain arrays (images, labels, class names, group = patient), so both datasets share one sampler.
The CT split keeps fine-grained pairs (LeftParotid / RightParotid) among the novel classes, and patches keep
their orientation: no mirroring anywhere, since a left-right flip would turn one parotid into the other.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dosepred.io import sources
from dosepred.progress import Progress

#: Meta-training classes (taken from training patients) and novel classes (evaluated on validation patients).
CT_BASE: tuple[str, ...] = ("Brainstem", "SpinalCord", "Mandible", "PTV56", "PTV70")
CT_NOVEL: tuple[str, ...] = ("LeftParotid", "RightParotid", "Esophagus", "Larynx", "PTV63")
DIGITS_BASE: tuple[str, ...] = ("0", "1", "2", "3", "4")
DIGITS_NOVEL: tuple[str, ...] = ("5", "6", "7", "8", "9")
#: CT window in HU mapped to [0, 1]: soft tissue and bone stay apart, air (and padding) is 0.
HU_WINDOW: tuple[float, float] = (-400.0, 600.0)


@dataclass
class PatchSet:
    """Images (N, 1, H, W) in [0, 1], integer labels into ``classes``, and the source (patient) of each."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    groups: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def counts(self) -> dict[str, int]:
        return {name: int((self.labels == i).sum()) for i, name in enumerate(self.classes)}


def ct_patches(source: Path, classes: Sequence[str], *, size: int = 32, slices: int = 4,
               progress: Progress | None = None) -> PatchSet:
    """Axial CT patches centred on each structure's in-slice mask centroid.

    For each patient and each contoured class, ``slices`` axial slices are taken at evenly spaced quantiles of
    the structure's superior-inferior extent (so a patch set covers each organ from top to bottom).

    Raises:
        PatientDataError: ``source`` holds no readable patient.
    """
    paths = sources.find_patients(source)
    images: list[np.ndarray] = []
    labels: list[int] = []
    groups: list[str] = []
    for done, path in enumerate(paths, start=1):
        patient = sources.read_patient(path)
        ct = np.clip((patient.ct - HU_WINDOW[0]) / (HU_WINDOW[1] - HU_WINDOW[0]), 0.0, 1.0)
        for label, roi in enumerate(classes):
            mask = patient.structures.get(roi)
            if mask is None:
                continue
            present = np.flatnonzero(mask.any(axis=(0, 1)))
            picks = np.unique(present[((np.arange(slices) + 0.5) / slices * len(present)).astype(int)])
            for k in picks:
                rows, cols = np.nonzero(mask[:, :, k])
                images.append(_crop(ct[:, :, k], round(rows.mean()), round(cols.mean()), size))
                labels.append(label)
                groups.append(patient.id)
        if progress is not None:
            progress("patches", done, len(paths))
    return PatchSet(torch.from_numpy(np.stack(images))[:, None], torch.tensor(labels), tuple(classes), tuple(groups))


def _crop(image: np.ndarray, row: int, col: int, size: int) -> np.ndarray:
    """A size x size window centred on (row, col); outside the image is air (0)."""
    padded = np.pad(image, size, constant_values=0.0)
    top, left = row + size - size // 2, col + size - size // 2
    return np.ascontiguousarray(padded[top:top + size, left:left + size], dtype=np.float32)


def digits_patches(classes: Sequence[str], *, size: int = 32) -> PatchSet:
    """scikit-learn's bundled 8x8 digits of the given classes, scaled to [0, 1] and resized to size x size."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    wanted = {int(name): label for label, name in enumerate(classes)}
    keep = np.isin(digits.target, list(wanted))
    images = torch.from_numpy(digits.images[keep] / 16.0).float()[:, None]
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    labels = torch.tensor([wanted[int(t)] for t in digits.target[keep]])
    return PatchSet(images, labels, tuple(classes), tuple(f"digit_{i}" for i in np.flatnonzero(keep)))


def load_patches(dataset: str, patients: Path | None, *, novel: bool, size: int, slices: int,
                 progress: Progress | None = None) -> PatchSet:
    """The base (training) or novel (evaluation) patches of ``dataset`` ("ct": from ``patients``; "digits").

    Raises:
        ValueError: an unknown dataset, or patients given for the digits.
        ImportError: the digits without scikit-learn.
        PatientDataError: no readable patient in ``patients``.
    """
    if dataset == "digits":
        if patients is not None:
            raise ValueError("patients apply to the ct dataset only")
        return digits_patches(DIGITS_NOVEL if novel else DIGITS_BASE, size=size)
    if dataset != "ct":
        raise ValueError(f"unknown few-shot dataset {dataset!r}; choose ct or digits")
    if patients is None:
        raise ValueError("the ct dataset needs a folder of patients")
    return ct_patches(patients, CT_NOVEL if novel else CT_BASE, size=size, slices=slices, progress=progress)


@dataclass(frozen=True)
class Episode:
    """Indices into a patch set; episode label i means class ``classes[i]``; support is ordered way by way."""

    classes: torch.Tensor
    support: torch.Tensor
    query: torch.Tensor

    @property
    def support_labels(self) -> torch.Tensor:
        return torch.arange(len(self.classes)).repeat_interleave(len(self.support) // len(self.classes))

    @property
    def query_labels(self) -> torch.Tensor:
        return torch.arange(len(self.classes)).repeat_interleave(len(self.query) // len(self.classes))


class EpisodeSampler:
    """N-way K-shot episodes: N classes drawn at random, then K support and Q query items per class, disjoint.

    With ``groups`` (each item's source, e.g. its patient) a class's queries come from other sources than its
    support: patches of one patient's organ on nearby slices would otherwise make a query an easy near-copy.
    """

    def __init__(self, labels: torch.Tensor, *, ways: int, shots: int, queries: int, seed: int = 0,
                 groups: Sequence[str] | None = None) -> None:
        if ways < 2 or shots < 1 or queries < 1:
            raise ValueError(f"need ways >= 2, shots >= 1, queries >= 1 (got {ways}, {shots}, {queries})")
        if groups is not None and len(groups) != len(labels):
            raise ValueError(f"{len(groups)} groups for {len(labels)} items")
        self.by_class = [torch.nonzero(labels == c).flatten() for c in range(int(labels.max()) + 1)]
        self.groups = groups
        eligible = [c for c, items in enumerate(self.by_class) if self._queries_left(items, shots) >= queries]
        if len(eligible) < ways:
            sources = " from other sources (patients) than the support" if groups is not None else ""
            raise ValueError(f"{ways}-way {shots}-shot episodes need {ways} classes with {shots} support and {queries} "
                             f"query items{sources}; only {len(eligible)} have them")
        self.eligible = torch.tensor(eligible)
        self.ways, self.shots, self.queries = ways, shots, queries
        self.generator = torch.Generator().manual_seed(seed)

    def _queries_left(self, items: torch.Tensor, shots: int) -> int:
        """The fewest query candidates any support of ``shots`` of ``items`` leaves."""
        if self.groups is None:
            return len(items) - shots
        sizes = sorted(Counter(self.groups[i] for i in items.tolist()).values(), reverse=True)
        return len(items) - sum(sizes[:shots]) if len(items) >= shots else -1

    def sample(self, generator: torch.Generator | None = None) -> Episode:
        """The next episode of the sampler's own stream, or the one that ``generator`` draws."""
        generator = generator or self.generator
        chosen = self.eligible[torch.randperm(len(self.eligible), generator=generator)[: self.ways]]
        support, query = [], []
        for c in chosen.tolist():
            items = self.by_class[c][torch.randperm(len(self.by_class[c]), generator=generator)]
            support.append(items[: self.shots])
            rest = items[self.shots:]
            if self.groups is not None:
                taken = {self.groups[i] for i in support[-1].tolist()}
                rest = rest[[self.groups[i] not in taken for i in rest.tolist()]]
            query.append(rest[: self.queries])
        return Episode(chosen, torch.cat(support), torch.cat(query))
