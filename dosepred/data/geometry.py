"""Beam geometry from the patient's own masks: where the beams that cross the targets pass, and how far
each voxel is from a target.

Convention (IEC 61217, head-first supine, which OpenKBP's plans use): gantry angle 0 deg puts the source
anterior to the patient, 90 deg at the patient's left. In the OpenKBP axes (axis 0 anterior -> posterior,
axis 1 right -> left) the source lies along (-cos a, sin a). Beams are coplanar, so each axial slice is
treated on its own, and divergence is ignored: a beam's strip in a slice is every voxel whose coordinate
across the beam falls where the targets of that slice project.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: OpenKBP's plans: 9 equispaced coplanar beams.
OPENKBP_BEAM_ANGLES: tuple[float, ...] = tuple(float(a) for a in range(0, 360, 40))
#: Dose falls off over a few centimetres outside the target; the proximity channel decays on this scale.
PROXIMITY_SCALE_MM = 30.0


def beam_strips(target_level: np.ndarray, spacing: tuple[float, float, float], angle_deg: float) -> np.ndarray:
    """For one beam angle, the highest target level each voxel's beam line crosses in its axial slice.

    Args:
        target_level: (n0, n1, n2) prescription level of the highest target at each voxel (0 outside).
        spacing: voxel size (mm) along axes 0, 1, 2.
        angle_deg: gantry angle.
    Returns:
        (n0, n1, n2) float32: the level carried by the beam line through each voxel.
    """
    return _strips(target_level, np.nonzero(target_level), spacing, angle_deg)


def _strips(target_level: np.ndarray, targets: tuple[np.ndarray, ...], spacing: tuple[float, float, float],
            angle_deg: float) -> np.ndarray:
    """``beam_strips`` with the target voxels' indices (``np.nonzero(target_level)``) found once for every angle."""
    n0, n1, n2 = target_level.shape
    angle = np.radians(angle_deg)
    x0 = (np.arange(n0) - (n0 - 1) / 2) * spacing[0]
    x1 = (np.arange(n1) - (n1 - 1) / 2) * spacing[1]
    across = x0[:, None] * np.sin(angle) + x1[None, :] * np.cos(angle)  # coordinate across the beam (mm)
    width = min(spacing[0], spacing[1])
    bins = np.round((across - across.min()) / width).astype(np.int64)  # (n0, n1)
    carried = np.zeros((int(bins.max()) + 2, n2), dtype=np.float32)
    i, j, k = targets
    np.maximum.at(carried, (bins[i, j], k), target_level[i, j, k])
    carried[1:] = np.maximum(carried[1:], carried[:-1])  # close the one-bin gaps that rounding leaves
    return carried[bins]  # (n0, n1, n2)


def beam_coverage(target_level: np.ndarray, spacing: tuple[float, float, float],
                  angles_deg: tuple[float, ...] | list[float]) -> np.ndarray:
    """The mean over beams of :func:`beam_strips`: 1 inside the highest target, high where many beams cross."""
    targets = np.nonzero(target_level)
    total = np.zeros(target_level.shape, dtype=np.float32)
    for angle in angles_deg:
        total += _strips(target_level, targets, spacing, angle)
    return total / max(1, len(angles_deg))


def target_proximity(targets: np.ndarray, spacing: tuple[float, float, float],
                     within: np.ndarray | None = None) -> np.ndarray:
    """exp(-distance to the nearest target voxel / 30 mm): 1 inside a target, 0 without one.

    ``within``: the voxels whose value is needed (e.g. the possible-dose mask); the others are 0. The distances
    are then computed in the box around them and the targets only, which holds every target voxel, so each
    needed value is exactly the one of the whole volume at a fraction of the cost.
    """
    proximity = np.zeros(targets.shape, dtype=np.float32)
    if not targets.any():
        return proximity
    # find_objects: the smallest box holding every true voxel
    box = (slice(None),) * targets.ndim if within is None else ndimage.find_objects((targets | within).astype(np.uint8))[0]
    distance = ndimage.distance_transform_edt(~targets[box], sampling=spacing)  # mm to the nearest target voxel
    proximity[box] = np.exp(-distance / PROXIMITY_SCALE_MM)
    return proximity if within is None else proximity * within

