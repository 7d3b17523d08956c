"""A patient's DVHs and metrics: records, an interactive chart, a static plot and the metrics table.

The predicted dose is drawn solid and the reference (when the patient has one) dashed.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import BinaryIO

import numpy as np
from matplotlib.figure import Figure

from dosepred.io.files import atomic_file
from dosepred.io.patient import Patient
from dosepred.metrics import OpenKBPScorer, dvh_curves
from dosepred.visual.slices import ROI_COLOURS


def metrics_rows(patient: Patient, predicted: np.ndarray) -> tuple[list[dict[str, object]], dict[str, float]]:
    """Per-ROI DVH metrics of the prediction (and reference and error when the patient has a dose),
    and the patient's OpenKBP dose and DVH scores (empty without a reference)."""
    reference = patient.dose if patient.dose is not None else predicted
    scorer = OpenKBPScorer()
    scorer.add(patient.id, reference, predicted, structures=patient.structure_stack(),
               possible_dose_mask=patient.possible_dose_mask, voxel_volume_mm3=patient.voxel_volume_mm3)
    rows = []
    for row in scorer.evaluation.roi_table():
        out: dict[str, object] = {"roi": row["roi"], "metric": row["metric"], "predicted_gy": round(row["predicted_gy"], 3)}
        if patient.dose is not None:
            out |= {"reference_gy": round(row["reference_gy"], 3),
                    "difference_gy": round(row["predicted_gy"] - row["reference_gy"], 3)}
        rows.append(out)
    scores = {}
    if patient.dose is not None:
        scores = {"dose_score": scorer.evaluation.dose_score, "dvh_score": scorer.evaluation.dvh_score}
    return rows, scores


def metrics_csv(rows: list[dict[str, object]]) -> str:
    """``metrics_rows`` as CSV text (a header line, then a line a row)."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def write_metrics_csv(rows: list[dict[str, object]], path: Path) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(metrics_csv(rows))


def dvh_records(patient: Patient, predicted: np.ndarray, *, bin_width_gy: float = 0.5) -> list[dict[str, object]]:
    """Long-form DVH points: {"roi", "dose_gy", "volume_pct", "dose"} with dose "predicted" or "reference"."""
    doses = {"predicted": predicted} | ({"reference": patient.dose} if patient.dose is not None else {})
    top = max(float(d.max()) for d in doses.values())
    records = []
    for kind, dose in doses.items():
        levels, curves = dvh_curves(dose, patient.structures, bin_width_gy=bin_width_gy, max_dose_gy=top)
        for roi, curve in curves.items():
            records += [{"roi": roi, "dose_gy": float(level), "volume_pct": float(volume), "dose": kind}
                        for level, volume in zip(levels, curve)]
    return records


def dvh_chart(records: list[dict[str, object]], title: str = "DVH"):  # noqa: ANN201 - an altair.Chart
    """An interactive DVH (zoom, pan, tooltips): colour per ROI, predicted solid, reference dashed."""
    import altair as alt

    return (
        alt.Chart(alt.Data(values=records), title=title)
        .mark_line()
        .encode(
            x=alt.X("dose_gy:Q", title="dose (Gy)"),
            y=alt.Y("volume_pct:Q", title="volume (%)", scale=alt.Scale(domain=[0, 100])),
            color=alt.Color("roi:N", title="structure",
                            scale=alt.Scale(domain=list(ROI_COLOURS), range=list(ROI_COLOURS.values()))),
            strokeDash=alt.StrokeDash("dose:N", title="dose", sort=["predicted", "reference"]),
            tooltip=["roi:N", "dose:N", alt.Tooltip("dose_gy:Q", format=".1f"), alt.Tooltip("volume_pct:Q", format=".1f")],
        )
        .interactive()
    )


def save_dvh_plot(patient: Patient, predicted: np.ndarray, path: Path | BinaryIO) -> None:
    """Cumulative DVHs per ROI as a PNG: predicted solid, reference dashed."""
    if isinstance(path, Path):
        with atomic_file(path) as tmp:
            dvh_figure(patient, predicted).savefig(tmp, dpi=110, format="png")
    else:
        dvh_figure(patient, predicted).savefig(path, dpi=110, format="png")


def dvh_figure(patient: Patient, predicted: np.ndarray) -> Figure:
    """Cumulative DVHs per ROI in the structures' own colours (a bare Figure: no pyplot, no backend change)."""
    top = float(max(predicted.max(), patient.dose.max() if patient.dose is not None else 0.0))
    figure = Figure(figsize=(9, 6))
    axes = figure.subplots()
    colours = ROI_COLOURS
    levels, curves = dvh_curves(predicted, patient.structures, max_dose_gy=top)
    for roi, curve in curves.items():
        axes.plot(levels, curve, color=colours[roi], label=roi)
    if patient.dose is not None:
        levels, curves = dvh_curves(patient.dose, patient.structures, max_dose_gy=top)
        for roi, curve in curves.items():
            axes.plot(levels, curve, color=colours[roi], linestyle="--")
    axes.set(xlabel="dose (Gy)", ylabel="volume (%)", title=f"DVH of {patient.id}: predicted solid, reference dashed",
             xlim=(0, top * 1.02), ylim=(0, 101))
    axes.grid(alpha=0.3)
    axes.legend(loc="upper right", fontsize=8)
    figure.tight_layout()
    return figure
