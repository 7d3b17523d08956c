"""Axial CT slices with one box per connected component of each structure, and the seen/unseen split.

A slice is ``ct[:, :, k]`` (rows anterior→posterior, columns patient right→left) on the 128³ OpenKBP grid;
boxes are (x0, y0, x1, y1) in its pixels. Components under ``MIN_PIXELS`` pixels are contour fragments
(a few mm²) and get no box.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from dosepred.io import sources
from dosepred.io.patient import ROIS, Patient
from dosepred.progress import Progress

#: Seen classes train the detector; each unseen class has a semantic sibling among them
#: (left/right parotid, larynx/esophagus, PTV63 between PTV56 and PTV70).
SEEN: tuple[str, ...] = ("Brainstem", "SpinalCord", "RightParotid", "Esophagus", "Mandible", "PTV56", "PTV70")
UNSEEN: tuple[str, ...] = ("LeftParotid", "Larynx", "PTV63")
MIN_PIXELS = 4
#: Two CT windows as input channels: the whole head (bone and air) and soft tissue (glands, cord).
WINDOWS_HU: tuple[tuple[float, float], ...] = ((-1000.0, 1500.0), (-160.0, 240.0))


def class_index(names: Sequence[str]) -> torch.Tensor:
    """Positions of ``names`` in ``ROIS`` (labels are ROI indices throughout)."""
    return torch.tensor([ROIS.index(name) for name in names], dtype=torch.long)


def structure_boxes(mask: np.ndarray, min_pixels: int = MIN_PIXELS) -> dict[int, list[tuple[int, int, int, int]]]:
    """Slice index -> the boxes of the mask's 8-connected components in that axial slice.

    Slices are interleaved with empty ones so that a single 3D labelling never joins two slices.
    """
    depth = mask.shape[2]
    spaced = np.zeros((2 * depth - 1, mask.shape[0], mask.shape[1]), dtype=np.uint8)
    spaced[0::2] = np.moveaxis(mask, 2, 0)  # SimpleITK reads (z, y, x): z = slice, y = row, x = column
    labels = sitk.ConnectedComponent(sitk.GetImageFromArray(spaced), True)
    shapes = sitk.LabelShapeStatisticsImageFilter()
    shapes.Execute(labels)
    boxes: dict[int, list[tuple[int, int, int, int]]] = {}
    for label in shapes.GetLabels():
        if shapes.GetNumberOfPixels(label) < min_pixels:
            continue
        x, y, z, width, height, _ = shapes.GetBoundingBox(label)
        boxes.setdefault(z // 2, []).append((x, y, x + width, y + height))
    return boxes


@dataclass
class SliceSet:
    """Slices of several patients: CT in HU (int16, N x H x W) and per slice its boxes and ROI labels."""

    images: torch.Tensor
    boxes: list[torch.Tensor]
    labels: list[torch.Tensor]
    names: list[str]

    def __len__(self) -> int:
        return len(self.images)

    @classmethod
    def from_patients(cls, paths: Sequence[Path], *, slice_step: int = 1, progress: Progress | None = None) -> SliceSet:
        images, boxes, labels, names = [], [], [], []
        for done, path in enumerate(paths, 1):
            patient = sources.read_patient(path)
            for index, (ct, slice_boxes, slice_labels) in patient_slices(patient, slice_step).items():
                images.append(torch.from_numpy(np.clip(ct, -1024, 3071).astype(np.int16)))
                boxes.append(slice_boxes)
                labels.append(slice_labels)
                names.append(f"{patient.id}:{index}")
            if progress:
                progress("slices", done, len(paths))
        if not images:
            raise ValueError("no contoured structure in any slice of these patients")
        return cls(torch.stack(images), boxes, labels, names)

    @classmethod
    def from_source(cls, source: Path, **kwargs) -> SliceSet:
        return cls.from_patients(sources.find_patients(Path(source)), **kwargs)


def patient_slices(patient: Patient, slice_step: int = 1) -> dict[int, tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
    """Every ``slice_step``-th axial slice holding a box: slice index -> (CT slice, boxes, labels)."""
    if slice_step < 1:
        raise ValueError(f"the slice step must be at least 1, not {slice_step}")
    per_slice: dict[int, list[tuple[tuple[int, int, int, int], int]]] = {}
    for roi, mask in patient.structures.items():
        for index, found in structure_boxes(mask).items():
            per_slice.setdefault(index, []).extend((box, ROIS.index(roi)) for box in found)
    slices = {}
    for index in sorted(per_slice)[::slice_step]:
        found = per_slice[index]
        slices[index] = (patient.ct[:, :, index],
                         torch.tensor([box for box, _ in found], dtype=torch.float32),
                         torch.tensor([label for _, label in found], dtype=torch.long))
    return slices


def network_input(hu: torch.Tensor) -> torch.Tensor:
    """HU slices (N x H x W) -> the network's input (N x len(WINDOWS_HU) x H x W), each window scaled to [0, 1]."""
    hu = hu.float()
    return torch.stack([((hu - low) / (high - low)).clamp(0, 1) for low, high in WINDOWS_HU], dim=1)
