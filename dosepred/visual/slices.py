"""Orthogonal slices of a patient: CT with a window, dose colourwash, isodose lines, structure outlines.

Planes follow the OpenKBP axes (0 anterior->posterior, 1 right->left, 2 superior->inferior): an axial
slice fixes axis 2 and is shown anterior up with the patient's left on the viewer's right (radiological
convention); coronal fixes axis 0 (superior up); sagittal fixes axis 1 (superior up, anterior left).
Pixels keep their physical aspect ratio.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from matplotlib.figure import Figure

from dosepred.io.patient import ROIS, Patient

PLANES = ("axial", "coronal", "sagittal")
#: name -> (level, width) in HU
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "soft tissue": (40.0, 400.0), "bone": (400.0, 1800.0), "lung": (-600.0, 1500.0), "brain": (40.0, 80.0),
}
ROI_COLOURS = dict(zip(ROIS, ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                              "#7f7f7f", "#bcbd22", "#17becf")))


@dataclass
class SliceView:
    """What to draw on one slice."""

    plane: str = "axial"
    index: int | None = None  # None: the middle of the axis
    window: tuple[float, float] = WINDOW_PRESETS["soft tissue"]  # level, width (HU)
    dose_threshold_gy: float = 5.0  # no colourwash below this
    dose_opacity: float = 0.45
    isodose_gy: tuple[float, ...] = (56.0, 63.0, 70.0)
    structures: tuple[str, ...] = field(default_factory=lambda: ROIS)
    overlay: str = "dose"  # "dose" or "uncertainty"


def plane_axis(plane: str) -> int:
    if plane not in PLANES:
        raise ValueError(f"plane must be one of {PLANES}, got {plane!r}")
    return {"axial": 2, "coronal": 0, "sagittal": 1}[plane]


def take_slice(volume: np.ndarray, plane: str, index: int) -> np.ndarray:
    """A 2D image of ``volume`` oriented for display (rows top to bottom, columns left to right)."""
    axis = plane_axis(plane)
    image = np.take(volume, index, axis=axis)
    # axial: rows = anterior->posterior, columns = right->left (radiological). coronal/sagittal: rows = axis 2.
    return image if plane == "axial" else image.T


def pixel_aspect(spacing: tuple[float, float, float], plane: str) -> float:
    """Height / width of one displayed pixel."""
    row_axis, column_axis = {"axial": (0, 1), "coronal": (2, 1), "sagittal": (2, 0)}[plane]
    return spacing[row_axis] / spacing[column_axis]


def slice_figure(patient: Patient, dose: np.ndarray | None, view: SliceView,
                 uncertainty: np.ndarray | None = None) -> Figure:
    """One slice: CT, the dose (or uncertainty) colourwash, isodose lines and structure outlines."""
    axis = plane_axis(view.plane)
    index = patient.shape[axis] // 2 if view.index is None else int(np.clip(view.index, 0, patient.shape[axis] - 1))
    level, width = view.window
    figure = Figure(figsize=(5, 5), dpi=100)
    axes = figure.add_subplot()
    extent_aspect = pixel_aspect(patient.spacing, view.plane)
    axes.imshow(take_slice(patient.ct, view.plane, index), cmap="gray", vmin=level - width / 2,
                vmax=level + width / 2, aspect=extent_aspect, interpolation="nearest")
    overlay = uncertainty if view.overlay == "uncertainty" and uncertainty is not None else dose
    if overlay is not None:
        wash = take_slice(overlay, view.plane, index)
        shown = np.ma.masked_less(wash, view.dose_threshold_gy if overlay is dose else 1e-3)
        image = axes.imshow(shown, cmap="jet" if overlay is dose else "magma", alpha=view.dose_opacity,
                            vmin=0, vmax=max(float(np.nanmax(overlay)), 1e-6), aspect=extent_aspect,
                            interpolation="nearest")
        figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04,
                        label="dose (Gy)" if overlay is dose else "uncertainty (Gy)")
    if dose is not None and view.isodose_gy:
        levels = sorted(level for level in view.isodose_gy if 0 < level < float(dose.max()))
        if levels:
            lines = axes.contour(take_slice(dose, view.plane, index), levels=levels, cmap="autumn", linewidths=1.0)
            axes.clabel(lines, fmt="%g Gy", fontsize=7)
    for roi in view.structures:
        if roi in patient.structures:
            outline = take_slice(patient.structures[roi], view.plane, index)
            if outline.any():
                axes.contour(outline.astype(np.float32), levels=[0.5], colors=[ROI_COLOURS[roi]], linewidths=1.0)
    axes.set_title(f"{view.plane} slice {index + 1}/{patient.shape[axis]}")
    axes.set_axis_off()
    figure.tight_layout()
    return figure
