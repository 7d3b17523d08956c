"""Augmentation of a whole batch on the training device, each sample's draw a function of its seed alone
(so a resumed run repeats it exactly, whatever the device).

Per sample: a left-right mirror that swaps the parotid channels; with ``affine_prob``, small rotations
about every axis and shifts; with ``beam_rotation_prob``, a rotation about the patient's long axis by a
multiple of the beam spacing (40 deg for OpenKBP's 9 beams), which maps the beam set onto itself, so the
rotated anatomy with the rotated dose is still a plan with the same beams.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from dosepred.data.transforms import CT_WINDOW_HU, LEFT_RIGHT_AXIS, LEFT_RIGHT_ROIS

#: Keys of a compact batch (``dosepred.data.transforms.patient_to_sample``) resampled with trilinear
#: interpolation; the packed masks are resampled by nearest neighbour, which moves every bit alike.
SMOOTH_KEYS = ("ct", "beams", "dose", "teacher_dose")


@dataclass(frozen=True)
class Augmentation:
    flip_prob: float = 0.5
    affine_prob: float = 0.5
    rotate_deg: float = 5.0
    shift_fraction: float = 0.03
    beam_rotation_prob: float = 0.0
    beam_step_deg: float = 40.0

    @classmethod
    def for_data(cls, data: dict) -> Augmentation | None:
        """The augmentation a ``data`` config section asks for (None without ``augment``); beam-spacing
        rotations step by the spacing of its ``beam_angles``."""
        if not data["augment"]:
            return None
        angles = data.get("beam_angles") or []
        return cls(beam_rotation_prob=data.get("beam_rotation", 0.0),
                   beam_step_deg=360 / len(angles) if angles else 40.0)

    def __call__(self, batch: dict[str, torch.Tensor], seeds: list[int]) -> dict[str, torch.Tensor]:
        """A compact ``batch`` (plus any attached volumes, each at its own grid) with sample i augmented by
        the draw of ``seeds[i]``."""
        out: dict[str, list[torch.Tensor]] = {key: [] for key in batch}
        for i, seed in enumerate(seeds):
            flip, matrix = self.draw(seed)
            volumes = {key: batch[key][i] for key in batch}
            if flip:
                volumes = {key: _flip(key, value) for key, value in volumes.items()}
            if matrix is not None:
                grids: dict[tuple[int, ...], torch.Tensor] = {}  # one sampling grid per volume size
                volumes = {key: _resample(key, value, matrix, grids) for key, value in volumes.items()}
            for key in batch:
                out[key].append(volumes[key])
        return {key: torch.stack(values) for key, values in out.items()}

    def draw(self, seed: int) -> tuple[bool, np.ndarray | None]:
        """(mirror?, 3x4 affine in normalised voxel-axis coordinates or None) for one sample."""
        rng = np.random.default_rng(seed)
        flip = bool(rng.random() < self.flip_prob)
        angles, shift = np.zeros(3), np.zeros(3)
        if rng.random() < self.affine_prob:
            angles = np.radians(rng.uniform(-self.rotate_deg, self.rotate_deg, 3))
            shift = rng.uniform(-2 * self.shift_fraction, 2 * self.shift_fraction, 3)  # the field spans 2
        if self.beam_rotation_prob and rng.random() < self.beam_rotation_prob:
            steps = round(360 / self.beam_step_deg)
            angles[2] += math.radians(self.beam_step_deg * int(rng.integers(1, steps)))
        if not angles.any() and not shift.any():
            return flip, None
        return flip, np.concatenate([_rotation(angles), shift[:, None]], axis=1)


def _flip(key: str, volume: torch.Tensor) -> torch.Tensor:
    flipped = torch.flip(volume, dims=(LEFT_RIGHT_AXIS + 1,))
    if key != "masks":
        return flipped
    right, left = LEFT_RIGHT_ROIS  # trade the parotids' bits
    right_bit, left_bit = (flipped >> right) & 1, (flipped >> left) & 1
    cleared = flipped & ~((1 << right) | (1 << left))
    return cleared | (right_bit << left) | (left_bit << right)


def _rotation(angles: np.ndarray) -> np.ndarray:
    """Rotations about voxel axes 0, 1 and 2 (radians), composed; axis 2 is the patient's long axis."""
    matrix = np.eye(3)
    for axis, angle in enumerate(angles):
        a, b = [i for i in range(3) if i != axis]
        turn = np.eye(3)
        turn[a, a] = turn[b, b] = math.cos(angle)
        turn[a, b], turn[b, a] = -math.sin(angle), math.sin(angle)
        matrix = turn @ matrix
    return matrix


def _resample(key: str, volume: torch.Tensor, matrix: np.ndarray, grids: dict[tuple[int, ...], torch.Tensor]) -> torch.Tensor:
    """One (C, ...) volume through ``matrix`` (output voxel -> input voxel, normalised coordinates, so the
    same matrix moves volumes of any grid alike)."""
    air = CT_WINDOW_HU[0] if key == "ct" else 0.0  # what lies outside the field: air, no structure, no dose
    source = volume[None].float() - air
    size = tuple(source.shape[2:])
    if size not in grids:
        # grid_sample's coordinates are (x, y, z) = voxel axes (2, 1, 0): reverse rows and columns.
        theta = torch.as_tensor(matrix[::-1, [2, 1, 0, 3]].copy(), dtype=source.dtype, device=source.device)[None]
        grids[size] = F.affine_grid(theta, [1, 1, *size], align_corners=False)
    mode = "bilinear" if key in SMOOTH_KEYS else "nearest"
    moved = F.grid_sample(source, grids[size], mode=mode, padding_mode="zeros", align_corners=False)[0] + air
    return moved.to(volume.dtype) if volume.is_floating_point() else moved.round().to(volume.dtype)
