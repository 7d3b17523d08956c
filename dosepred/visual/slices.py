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
from matplotlib.lines import Line2D

from dosepred.io.patient import ROIS, Patient

PLANES = ("axial", "coronal", "sagittal")
#: name -> (level, width) in HU
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "soft tissue": (40.0, 400.0), "bone": (400.0, 1800.0), "lung": (-600.0, 1500.0), "brain": (40.0, 80.0),
}
ROI_COLOURS = dict(zip(ROIS, ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                              "#7f7f7f", "#bcbd22", "#17becf")))


#: Colourwashes besides the dose: name -> (colour map, label, symmetric about 0)
OVERLAYS: dict[str, tuple[str, str, bool]] = {
    "uncertainty": ("magma", "uncertainty (Gy)", False),
    "difference": ("RdBu_r", "predicted - reference (Gy)", True),
    "gamma": ("RdYlGn_r", "gamma (pass <= 1)", False),
}


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
    overlay: str = "dose"  # "dose", or a key of ``OVERLAYS`` given to ``slice_figure``


@dataclass(frozen=True)
class WashScale:
    """How a colourwash is coloured: a colour map between ``low`` and ``high``, hidden below ``hide_below``."""

    colours: str
    low: float
    high: float
    label: str
    hide_below: float | None = None
    opacity: float = 0.45


def wash_scale(view: SliceView, dose_max: float | None, overlays: dict[str, np.ndarray]) -> WashScale | None:
    """The colourwash of ``view``: its overlay, else a dose from 0 to ``dose_max`` (None: no dose)."""
    if view.overlay in overlays:
        values = overlays[view.overlay]
        colours, label, symmetric = OVERLAYS[view.overlay]
        finite = np.abs(values[np.isfinite(values)])
        # the 99.5th percentile: a few extreme voxels would wash every ordinary difference out
        top = max(float(np.percentile(finite, 99.5)) if finite.size else 0.0, 1e-6)
        low, high = (-top, top) if symmetric else (0.0, 2.0 if view.overlay == "gamma" else top)
        return WashScale(colours, low, high, label, 1e-3 if view.overlay == "uncertainty" else None,
                         max(view.dose_opacity, 0.6))
    if dose_max is not None:
        return WashScale("jet", 0.0, max(dose_max, 1e-6), "dose (Gy)", view.dose_threshold_gy, view.dose_opacity)
    return None


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


#: (row axis, column axis) of each plane's displayed image, in the patient's axes
DISPLAY_AXES = {"axial": (0, 1), "coronal": (2, 1), "sagittal": (2, 0)}


def pixel_aspect(spacing: tuple[float, float, float], plane: str) -> float:
    """Height / width of one displayed pixel."""
    row_axis, column_axis = DISPLAY_AXES[plane]
    return spacing[row_axis] / spacing[column_axis]


def slice_figure(patient: Patient, dose: np.ndarray | None, view: SliceView,
                 overlays: dict[str, np.ndarray] | None = None, dose_max: float | None = None) -> Figure:
    """One slice: CT, the dose colourwash (or one of ``overlays``, see ``OVERLAYS``), isodose lines and
    structure outlines. The dose colours run from 0 to ``dose_max`` (the dose's own maximum by default): give
    figures that are compared side by side one scale."""
    axis = plane_axis(view.plane)
    index = patient.shape[axis] // 2 if view.index is None else int(np.clip(view.index, 0, patient.shape[axis] - 1))
    level, width = view.window
    figure = Figure(figsize=(5, 5), dpi=100)
    axes = figure.add_subplot()
    extent_aspect = pixel_aspect(patient.spacing, view.plane)
    axes.imshow(take_slice(patient.ct, view.plane, index), cmap="gray", vmin=level - width / 2,
                vmax=level + width / 2, aspect=extent_aspect, interpolation="nearest")
    if dose is not None and dose_max is None:
        dose_max = float(dose.max())
    scale = wash_scale(view, dose_max if dose is not None else None, overlays or {})
    if scale is not None:
        values = take_slice(overlays[view.overlay] if view.overlay in (overlays or {}) else dose, view.plane, index)
        shown = np.ma.masked_invalid(np.where(np.isinf(values), scale.high, values))
        if scale.hide_below is not None:
            shown = np.ma.masked_less(shown, scale.hide_below)
        image = axes.imshow(shown, cmap=scale.colours, alpha=scale.opacity, vmin=scale.low, vmax=scale.high,
                            aspect=extent_aspect, interpolation="nearest")
        figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label=scale.label)
    if dose is not None and view.isodose_gy:
        levels = sorted(level for level in view.isodose_gy if 0 < level < float(dose.max()))
        if levels:  # dashed white isodoses: apart from every structure's solid colour
            lines = axes.contour(take_slice(dose, view.plane, index), levels=levels, colors="white",
                                 linestyles="dashed", linewidths=1.0)
            axes.clabel(lines, fmt="%g Gy", fontsize=9, colors="white")
    shown_rois = []
    for roi in view.structures:
        if roi in patient.structures:
            outline = take_slice(patient.structures[roi], view.plane, index)
            if outline.any():
                axes.contour(outline.astype(np.float32), levels=[0.5], colors=[ROI_COLOURS[roi]], linewidths=1.2)
                shown_rois.append(roi)
    if shown_rois:
        handles = [Line2D([], [], color=ROI_COLOURS[roi], lw=2, label=roi) for roi in shown_rois]
        axes.legend(handles=handles, loc="lower left", fontsize=7, framealpha=0.6, ncol=2)
    axes.set_title(f"{view.plane} slice {index + 1}/{patient.shape[axis]}")
    axes.set_axis_off()
    figure.tight_layout()
    return figure
