from __future__ import annotations

import numpy as np
import pytest

from dosepred.visual.dvh import dvh_records, metrics_rows
from dosepred.visual.slices import SliceView, pixel_aspect, slice_figure, take_slice


def test_slices_are_oriented_for_display(phantom_small) -> None:
    volume = np.arange(np.prod(phantom_small.shape)).reshape(phantom_small.shape)
    assert take_slice(volume, "axial", 3).shape == phantom_small.shape[:2]
    assert take_slice(volume, "coronal", 3).shape == (phantom_small.shape[2], phantom_small.shape[1])
    assert pixel_aspect((4.0, 4.0, 2.0), "sagittal") == 0.5


def test_slice_figure_draws_ct_dose_isodoses_and_outlines(phantom_small) -> None:
    view = SliceView(plane="axial", isodose_gy=(30.0, 60.0), structures=("PTV70", "PTV56"))
    axes = slice_figure(phantom_small, phantom_small.dose, view).axes[0]
    assert len(axes.images) == 2  # CT and dose colourwash
    assert len(axes.collections) >= 3  # two isodose levels + outlines
    plain = slice_figure(phantom_small, None, SliceView(structures=())).axes[0]
    assert len(plain.images) == 1 and not plain.collections
    with pytest.raises(ValueError, match="plane"):
        slice_figure(phantom_small, None, SliceView(plane="oblique"))


def test_the_reports_predicted_and_reference_slices_share_one_dose_scale(phantom_small, monkeypatch) -> None:
    from dosepred.visual import report

    drawn = []
    monkeypatch.setattr(report, "_image", lambda figure: drawn.append(figure.axes[0].images[1].get_clim()) or "")
    report._slices(phantom_small, phantom_small.dose * 0.9)
    dose_rows = drawn[:6]  # predicted and reference, three planes each; the difference has its own scale
    assert dose_rows == [(0.0, pytest.approx(float(phantom_small.dose.max())))] * 6


def test_dvh_records_and_metrics_rows(phantom_small) -> None:
    predicted = phantom_small.dose * 0.9
    records = dvh_records(phantom_small, predicted)
    assert {r["dose"] for r in records} == {"predicted", "reference"}
    assert {r["roi"] for r in records} == set(phantom_small.structures)
    assert all(0 <= r["volume_pct"] <= 100 for r in records)
    rows, scores = metrics_rows(phantom_small, predicted)
    assert scores["dose_score"] > 0 and {"reference_gy", "difference_gy"} <= set(rows[0])
    phantom_small_without_dose = type(phantom_small)(**{**phantom_small.__dict__, "dose": None})
    rows, scores = metrics_rows(phantom_small_without_dose, predicted)
    assert scores == {} and "reference_gy" not in rows[0]


def test_dvh_chart_is_titled_dvh(phantom_small) -> None:
    pytest.importorskip("altair")
    from dosepred.visual.dvh import dvh_chart

    spec = dvh_chart(dvh_records(phantom_small, phantom_small.dose), title="DVH of phantom").to_dict()
    assert "DVH" in str(spec["title"]) and spec["mark"]["type"] == "line"
