"""Cumulative dose-volume histograms."""

from __future__ import annotations

import numpy as np


def dvh_curves(dose: np.ndarray, structures: dict[str, np.ndarray], *, bin_width_gy: float = 0.1,
               max_dose_gy: float | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Cumulative DVH of each structure: % of its volume receiving at least each dose level.

    Returns:
        The dose levels (Gy, from 0 in steps of ``bin_width_gy``) and, per structure, the volume
        percentages at those levels (100 at 0 Gy, non-increasing).
    """
    top = float(dose.max(initial=0.0)) if max_dose_gy is None else max_dose_gy
    n_bins = int(np.ceil(top / bin_width_gy)) + 2
    levels = np.arange(n_bins) * bin_width_gy
    curves = {}
    for name, mask in structures.items():
        roi_dose = dose[mask]
        if roi_dose.size == 0:
            continue
        bins = np.minimum((roi_dose / bin_width_gy).astype(np.int64), n_bins - 1)
        counts = np.bincount(bins, minlength=n_bins)
        at_least = np.cumsum(counts[::-1])[::-1]  # voxels whose bin is >= each level's bin
        curves[name] = 100.0 * at_least / roi_dose.size
    return levels, curves
