"""A one-file review of a prediction: self-contained HTML (figures inline) a physicist can file or mail.

It holds the patient and the model, the OpenKBP scores and gamma pass rate when a reference dose exists,
the targets' homogeneity and conformity, the plan objectives (predicted and reference), the DVH, key slices
through the highest target (predicted, and reference beside it) and the DVH metrics table.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from dosepred.io.files import atomic_file
from dosepred.io.patient import TARGETS, Patient
from dosepred.metrics.clinical import TG218, GammaCriteria, Objective, clinical_review
from dosepred.visual.dvh import dvh_figure, metrics_rows
from dosepred.visual.slices import PLANES, SliceView, slice_figure

NOTICE = "Research use only — not for clinical decisions."
_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #bbb;padding:.25em .6em;text-align:right}
th{background:#eee}td:first-child,th:first-child{text-align:left}.met{color:#176f2c}.missed{color:#b00020;font-weight:600}
.notice{background:#fff3cd;padding:.5em 1em;border:1px solid #e0c36a}img{max-width:100%}.row{display:flex;gap:1em}"""


def write_report(patient: Patient, dose: np.ndarray, path: str | Path, *, model: str, objectives: list[Objective],
                 gamma: GammaCriteria = TG218) -> None:
    """Write the review of ``dose`` (Gy, on the patient's grid) as one HTML file (atomically)."""
    review = clinical_review(patient, dose, objectives, gamma)
    rows, scores = metrics_rows(patient, dose)
    parts = [f"<h1>Dose prediction review: {_e(patient.id)}</h1>", f"<p class='notice'>{NOTICE}</p>",
             _table([{"patient": patient.id, "model": model, "grid": "x".join(map(str, patient.shape)),
                      "spacing (mm)": " x ".join(f"{s:g}" for s in patient.spacing),
                      "written": datetime.datetime.now().strftime("%Y-%m-%d %H:%M")}])]
    if scores:
        parts.append(f"<p>OpenKBP dose score <b>{scores['dose_score']:.3f} Gy</b>, DVH score "
                     f"<b>{scores['dvh_score']:.3f} Gy</b>.</p>")
    if "gamma" in review:
        parts.append(f"<p>Gamma pass rate ({_e(review['gamma']['criteria'])}): <b>{review['gamma']['pass_rate_percent']:.1f} %</b>"
                     f" of {review['gamma']['voxels']} voxels.</p>")
    parts += ["<h2>Plan objectives</h2>", _table([_objective_row(row) for row in review["objectives"]], raw=True),
              "<h2>Targets</h2>", _table([{"target": roi, "dose": name, **measures}
                                          for roi, by_dose in review["targets"].items() for name, measures in by_dose.items()]),
              "<h2>DVH</h2>", _image(dvh_figure(patient, dose)),
              "<h2>Key slices</h2>", _slices(patient, dose),
              "<h2>DVH metrics (Gy)</h2>", _table(sorted(rows, key=lambda row: row["roi"] not in TARGETS))]
    document = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>dosepred review {_e(patient.id)}</title>"
                f"<style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>\n")
    with atomic_file(path) as tmp:
        Path(tmp).write_text(document, encoding="utf-8")


def _slices(patient: Patient, dose: np.ndarray) -> str:
    """Axial, coronal and sagittal slices through the centre of the highest target; the reference and the
    difference below."""
    target = next((patient.structures[t] for t in reversed(TARGETS) if t in patient.structures), patient.possible_dose_mask)
    centre = np.argwhere(target).mean(0).round().astype(int) if target.any() else np.asarray(patient.shape) // 2
    index = {"axial": centre[2], "coronal": centre[0], "sagittal": centre[1]}
    rows = [("predicted", dose, "dose", {})]
    dose_max = max(float(dose.max()), float(patient.dose.max()) if patient.dose is not None else 0.0)  # one scale
    if patient.dose is not None:
        difference = np.where(patient.possible_dose_mask, dose - patient.dose, np.nan)
        rows += [("reference", patient.dose, "dose", {}),
                 ("predicted − reference", dose, "difference", {"difference": difference})]
    return "".join(f"<h3>{name}</h3><div class='row'>"
                   + "".join(_image(slice_figure(patient, values, SliceView(plane=plane, index=int(index[plane]),
                                                                            overlay=overlay), overlays,
                                                  dose_max))
                             for plane in PLANES) + "</div>" for name, values, overlay, overlays in rows)


def _objective_row(row: dict[str, object]) -> dict[str, str]:
    def verdict(kind: str) -> str:
        if kind not in row:
            return ""
        css = "met" if row[f"{kind} met"] else "missed"
        return f"<span class='{css}'>{row[kind]} ({'met' if row[f'{kind} met'] else 'missed'})</span>"

    return {"objective": _e(row["objective"]), "predicted": verdict("predicted"), "reference": verdict("reference"),
            "source": _e(row["source"])}


def _table(rows: list[dict[str, object]], *, raw: bool = False) -> str:
    if not rows:
        return "<p>(none)</p>"
    head = "".join(f"<th>{_e(column)}</th>" for column in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{value if raw else _e(value)}</td>" for value in row.values()) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _image(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    return f"<img alt='' src='data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}'>"


def _e(value: object) -> str:
    return html.escape(str(value))
