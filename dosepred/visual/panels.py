"""Slice panels for the interactive viewer: one plane of a patient as data a browser draws and reads out.

A panel holds the slice's picture at its own voxel resolution (CT in a window with a colourwash blended
in, as a PNG), structure outlines and isodose lines as vector paths (crisp at any zoom), and the voxel
values under the cursor (CT, doses, difference, gamma) as int16 arrays with a scale, so hover readouts
need no round trip. Rows and columns follow ``dosepred.visual.slices`` (radiological axial view, superior
up in coronal and sagittal); ``crosshair_of``/``voxel_of`` map between a voxel and a panel's (row, column).
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import contourpy
import numpy as np
from matplotlib import colormaps
from PIL import Image

from dosepred.io.patient import Patient
from dosepred.visual.slices import (DISPLAY_AXES, ROI_COLOURS, SliceView, WashScale, pixel_aspect, plane_axis,
                                    take_slice)

NO_VALUE = -32768  # int16 readout of a voxel without a value (outside the possible-dose mask, say)
ABOVE = 32767  # int16 readout of a value over the readout's ceiling
ISODOSE_COLOUR = "#ffffff"


@dataclass(frozen=True)
class Readout:
    """A volume read out under the cursor: ``label`` ``value × scale`` ``unit``."""

    label: str
    volume: np.ndarray
    unit: str
    scale: float  # int16 step: 1 HU, 0.01 Gy
    above: float | None = None  # values over it read "> above" (a gamma beyond its search is inf)


def crosshair_of(voxel: tuple[int, int, int], plane: str) -> tuple[int, int]:
    """The (row, column) of a voxel in a plane's image."""
    row_axis, column_axis = DISPLAY_AXES[plane]
    return voxel[row_axis], voxel[column_axis]


def voxel_of(voxel: tuple[int, int, int], plane: str, row: int, column: int) -> tuple[int, int, int]:
    """The voxel under (row, column) of a plane's image through ``voxel``: the plane's own axis stays."""
    row_axis, column_axis = DISPLAY_AXES[plane]
    moved = list(voxel)
    moved[row_axis], moved[column_axis] = row, column
    return moved[0], moved[1], moved[2]


def _png(rgb: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", optimize=False, compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _int16(values: np.ndarray, scale: float, above: float) -> str:
    """Little-endian int16 of ``values / scale``: ABOVE over ``above``, NO_VALUE where there is none (NaN)."""
    finite = np.nan_to_num(values, nan=0.0, posinf=ABOVE * scale, neginf=-ABOVE * scale)
    steps = np.clip(np.round(finite / scale), -(ABOVE - 1), ABOVE - 1)
    steps = np.where(values > above, ABOVE, steps)
    return base64.b64encode(np.where(np.isnan(values), NO_VALUE, steps).astype("<i2").tobytes()).decode()


def _readout(readout: Readout, plane: str, index: int) -> dict[str, object]:
    """What the viewer component reads out under the cursor: the values of one slice, and the ceiling
    (the readout's own, or the int16 range) that a value over it reads as "> ceiling"."""
    top = (ABOVE - 1) * readout.scale
    above = top if readout.above is None else min(readout.above, top)
    values = take_slice(readout.volume, plane, index).astype(np.float64)
    return {"label": readout.label, "unit": readout.unit, "scale": readout.scale, "above": above,
            "values": _int16(values, readout.scale, above)}


def _lines(image: np.ndarray, level: float) -> list[list[float]]:
    """Contour paths at ``level`` as flat [x0, y0, x1, y1, ...] lists in pixel units (column, row)."""
    generator = contourpy.contour_generator(z=image.astype(np.float64), line_type=contourpy.LineType.Separate)
    return [np.round(line, 2).ravel().tolist() for line in generator.lines(level) if len(line) > 1]


def slice_panel(patient: Patient, plane: str, index: int, *, title: str, wash: np.ndarray | None,
                scale: WashScale | None, view: SliceView, isodose: np.ndarray | None,
                readouts: list[Readout]) -> dict[str, object]:
    """One plane at ``index`` as the viewer component draws it.

    ``wash`` is the colourwash volume (a dose is hidden below ``view.dose_threshold_gy``, other washes where
    they have no value) drawn with ``scale``; ``isodose`` the dose whose ``view.isodose_gy`` lines are drawn.
    """
    axis = plane_axis(plane)
    index = int(np.clip(index, 0, patient.shape[axis] - 1))
    level, width = view.window
    ct = np.clip((take_slice(patient.ct, plane, index) - (level - width / 2)) / width, 0.0, 1.0)
    rgb = np.repeat(ct[..., None], 3, axis=-1)
    if wash is not None and scale is not None:
        values = take_slice(wash, plane, index).astype(np.float64)
        shown = ~np.isnan(values) & (values >= scale.hide_below if scale.hide_below is not None else True)
        normalised = np.clip((np.nan_to_num(values, posinf=scale.high, neginf=scale.low) - scale.low)
                             / (scale.high - scale.low), 0.0, 1.0)
        alpha = scale.opacity * shown[..., None]
        rgb = (1 - alpha) * rgb + alpha * colormaps[scale.colours](normalised)[..., :3]
    lines = []
    for roi in view.structures:
        if roi in patient.structures:
            outline = take_slice(patient.structures[roi], plane, index)
            if outline.any():
                lines.append({"label": roi, "colour": ROI_COLOURS[roi], "dash": False,
                              "paths": _lines(outline.astype(np.float32), 0.5)})
    if isodose is not None:
        image = take_slice(isodose, plane, index)
        for gy in sorted(view.isodose_gy):
            if 0 < gy < float(image.max()):
                lines.append({"label": f"{gy:g} Gy", "colour": ISODOSE_COLOUR, "dash": True, "paths": _lines(image, gy)})
    rows, columns = ct.shape
    return {"title": f"{title} · {plane} {index + 1}/{patient.shape[axis]}", "plane": plane, "rows": rows,
            "columns": columns, "aspect": pixel_aspect(patient.spacing, plane),
            "image": _png(np.round(rgb * 255).astype(np.uint8)), "lines": lines,
            "readouts": [_readout(readout, plane, index) for readout in readouts]}


def legend(view: SliceView, scales: list[WashScale], patient: Patient) -> dict[str, object]:
    """Structure colours, the isodose line style and the colourwashes' colour bars, for the views' legend."""
    bars = []
    for scale in scales:
        stops = colormaps[scale.colours](np.linspace(0.0, 1.0, 9))
        bars.append({"label": scale.label, "low": round(scale.low, 2), "high": round(scale.high, 2),
                     "colours": ["#%02x%02x%02x" % tuple(int(round(255 * c)) for c in stop[:3]) for stop in stops]})
    return {"structures": [{"label": roi, "colour": ROI_COLOURS[roi]} for roi in view.structures
                           if roi in patient.structures],
            "isodoses": [f"{gy:g} Gy" for gy in sorted(view.isodose_gy)], "bars": bars}
