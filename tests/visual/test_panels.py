"""Slice panels for the interactive viewer: coordinates, readouts, outlines and the colourwash."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from dosepred.visual.panels import ABOVE, NO_VALUE, Readout, crosshair_of, legend, slice_panel, voxel_of
from dosepred.visual.slices import PLANES, SliceView, take_slice, wash_scale


def decode(panel: dict, number: int) -> np.ndarray:
    readout = panel["readouts"][number]
    values = np.frombuffer(base64.b64decode(readout["values"]), dtype="<i2").reshape(panel["rows"], panel["columns"])
    return values


@pytest.mark.parametrize("plane", PLANES)
def test_a_click_lands_on_the_voxel_its_panel_shows(plane: str) -> None:
    voxel = (10, 20, 30)
    assert voxel_of(voxel, plane, *crosshair_of(voxel, plane)) == voxel
    moved = voxel_of(voxel, plane, 5, 7)
    assert crosshair_of(moved, plane) == (5, 7)
    fixed = {"axial": 2, "coronal": 0, "sagittal": 1}[plane]
    assert moved[fixed] == voxel[fixed]  # the plane's own slice stays
    volume = np.arange(32 * 33 * 34).reshape(32, 33, 34)  # every voxel its own value
    image = take_slice(volume, plane, moved[fixed])
    assert image[5, 7] == volume[moved]  # (row, column) of the displayed image is that voxel


def test_a_gamma_beyond_its_search_reads_over_the_ceiling_not_a_number(phantom_small) -> None:
    gamma = np.full(phantom_small.shape, np.nan)
    gamma[:, :, 20] = np.resize([0.5, np.inf, np.nan, 1.7], phantom_small.shape[:2])
    huge = np.full(phantom_small.shape, 1e6)  # over what int16 steps of 0.01 can hold
    panel = slice_panel(phantom_small, "axial", 20, title="Predicted", wash=None, scale=None, view=SliceView(),
                        isodose=None, readouts=[Readout("gamma", gamma, "", 0.01, above=2.0),
                                                Readout("huge", huge, "Gy", 0.01)])
    assert decode(panel, 0).ravel()[:4].tolist() == [50, ABOVE, NO_VALUE, 170]
    assert panel["readouts"][0]["above"] == 2.0
    assert np.all(decode(panel, 1) == ABOVE) and panel["readouts"][1]["above"] == pytest.approx(327.66)


def test_readouts_hold_the_voxel_values_to_their_step(phantom_small) -> None:
    dose = phantom_small.dose
    masked = np.where(phantom_small.possible_dose_mask, dose, np.nan)
    view = SliceView()
    panel = slice_panel(phantom_small, "coronal", 20, title="Predicted", wash=dose,
                        scale=wash_scale(view, float(dose.max()), {}), view=view, isodose=dose,
                        readouts=[Readout("CT", phantom_small.ct, "HU", 1.0), Readout("dose", masked, "Gy", 0.01)])
    ct, gy = decode(panel, 0), decode(panel, 1)
    expected = take_slice(masked, "coronal", 20)
    assert np.array_equal(ct, np.round(take_slice(phantom_small.ct, "coronal", 20)).astype(np.int16))
    assert np.all(gy[np.isnan(expected)] == NO_VALUE)
    assert np.allclose(gy[~np.isnan(expected)] * 0.01, expected[~np.isnan(expected)], atol=0.005)
    picture = Image.open(io.BytesIO(base64.b64decode(panel["image"].split(",", 1)[1])))
    assert picture.size == (panel["columns"], panel["rows"])
    assert panel["title"] == f"Predicted · coronal 21/{phantom_small.shape[0]}"


def test_outlines_isodoses_and_the_dose_threshold(phantom_small) -> None:
    dose = phantom_small.dose
    plain = SliceView(structures=(), isodose_gy=(), dose_threshold_gy=1e9)  # nothing over the CT
    index = phantom_small.shape[2] // 2
    bare = slice_panel(phantom_small, "axial", index, title="", wash=dose, scale=wash_scale(plain, float(dose.max()), {}),
                       view=plain, isodose=dose, readouts=[])
    assert bare["lines"] == []
    ct_only = slice_panel(phantom_small, "axial", index, title="", wash=None, scale=None, view=plain, isodose=None,
                          readouts=[])
    assert bare["image"] == ct_only["image"]  # a dose under the threshold is not drawn
    view = SliceView(isodose_gy=(30.0,))
    full = slice_panel(phantom_small, "axial", index, title="", wash=dose, scale=wash_scale(view, float(dose.max()), {}),
                       view=view, isodose=dose, readouts=[])
    labels = {line["label"]: line for line in full["lines"]}
    assert "30 Gy" in labels and labels["30 Gy"]["dash"] and "PTV70" in labels and not labels["PTV70"]["dash"]
    xs = np.concatenate([np.asarray(path[0::2]) for path in labels["PTV70"]["paths"]])
    ys = np.concatenate([np.asarray(path[1::2]) for path in labels["PTV70"]["paths"]])
    rows, columns = np.nonzero(take_slice(phantom_small.structures["PTV70"], "axial", index))
    assert rows.min() - 1 <= ys.min() and ys.max() <= rows.max() + 1  # the outline hugs the mask
    assert columns.min() - 1 <= xs.min() and xs.max() <= columns.max() + 1
    assert full["image"] != ct_only["image"]
    key = legend(view, [wash_scale(view, 70.0, {})], phantom_small)
    assert key["bars"][0]["label"] == "dose (Gy)" and key["bars"][0]["high"] == 70.0 and key["isodoses"] == ["30 Gy"]


def test_the_difference_wash_is_symmetric_and_ignores_a_few_extreme_voxels() -> None:
    difference = np.zeros((20, 20, 20))
    difference[:10] = np.linspace(-4, 4, 10)[:, None, None]
    difference[0, 0, 0] = 60.0  # one voxel far out
    scale = wash_scale(SliceView(overlay="difference"), 70.0, {"difference": difference})
    assert scale.low == -scale.high and 3.0 < scale.high < 5.0
