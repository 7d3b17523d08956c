"""dosepred viewer: predict a patient's dose and inspect it (slices, isodoses, DVH, metrics, downloads).

Run with ``dosepred app [--port N] [--data-root DIR]``. A thin face over library functions: nothing here
computes anything the library does not.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import astuple
from pathlib import Path

import numpy as np
import pandas as pd  # a dependency of streamlit
import streamlit as st
import torch

from dosepred.app.slice_viewer import slice_views
from dosepred.io import sources
from dosepred.io.errors import PatientDataError
from dosepred.io.patient import ROIS, TARGETS, Patient, require_grid
from dosepred.io.phantom import make_phantom
from dosepred.io.roi_names import RoiNames, UnmappedRoiWarning
from dosepred.io.uploads import extract_zip, patients_under, resolve_under, save_images
from dosepred.inference.ensemble import EnsemblePredictor
from dosepred.inference.loader import load_predictor
from dosepred.models import DEFAULT_MODEL
from dosepred.inference.predictor import Predictor
from dosepred.inference.writers import OutputFormat, write_dose
from dosepred.metrics.clinical import check_objectives, load_objectives
from dosepred.metrics.gamma import gamma_index
from dosepred.visual.dvh import dvh_chart, dvh_records, metrics_csv, metrics_rows
from dosepred.visual.report import NOTICE, write_report
from dosepred.visual.panels import Readout, crosshair_of, legend, slice_panel, voxel_of
from dosepred.visual.slices import (DISPLAY_AXES, PLANES, ROI_COLOURS, WINDOW_PRESETS, SliceView, plane_axis,
                                    wash_scale)

HEADERS = {"roi": "structure", "metric": "metric", "predicted_gy": "predicted (Gy)", "reference_gy": "reference (Gy)",
           "difference_gy": "predicted − reference (Gy)"}
DATA_ROOT_VARIABLE = "DOSEPRED_DATA_ROOT"
MODEL_VARIABLE = "DOSEPRED_MODEL"
ROI_NAMES_VARIABLE, PTV_VARIABLE = "DOSEPRED_ROI_NAMES", "DOSEPRED_PTV"  # dosepred app --roi-names, --ptv
REFERENCE_GY = 70.0
PANEL_CACHE = 96  # slice panels kept per session
LAYOUTS = ("Three planes", "Side by side")
MAP_MAX_GAMMA = 2.0  # the gamma colourwash's search: a voxel beyond it reads "> 2"


def data_root() -> Path | None:
    """The folder of patients the viewer may open (``dosepred app --data-root`` sets it)."""
    root = os.environ.get(DATA_ROOT_VARIABLE)
    return Path(root) if root else None


def model_name() -> str:
    """The model to predict with (``dosepred app --model`` sets it; the default shipped model otherwise)."""
    return os.environ.get(MODEL_VARIABLE) or DEFAULT_MODEL


@st.cache_resource(show_spinner=False)
def cached_predictor(model: str, device: str) -> Predictor | EnsemblePredictor:
    """A model or an ensemble, loaded by the one loader every command uses, once per process and device."""
    return load_predictor(model, device=torch.device(device))


def roi_names() -> RoiNames:
    """How a DICOM patient's ROI names map to the model's structures (``dosepred app --roi-names/--ptv``)."""
    return cached_roi_names(os.environ.get(ROI_NAMES_VARIABLE) or None, os.environ.get(PTV_VARIABLE) or "{}")


@st.cache_resource(show_spinner=False)
def cached_roi_names(table: str | None, prescriptions: str) -> RoiNames:
    return RoiNames.load(table, prescriptions=json.loads(prescriptions))


@st.cache_resource(show_spinner=False)
def phantom() -> Patient:
    return make_phantom()


def choose_patient(root: Path | None) -> tuple[str, Patient] | None:
    """The sidebar's source choice; returns (cache key, patient), or None after showing why not."""
    options = ["Phantom (embedded)"] + (["Patient under the data root"] if root else []) + ["Upload"]
    source = st.sidebar.radio("Patient", options)
    if source == options[0]:
        return "phantom", phantom()
    if source == "Upload":
        uploads = st.sidebar.file_uploader("A zip of one patient: an OpenKBP folder, or a clinic's DICOM (CT "
                                           "series + RTSTRUCT); or NIfTI files (ct.nii.gz, possible_dose_mask.nii.gz, "
                                           "<ROI>.nii.gz, ...)", type=["zip", "nii", "gz"], accept_multiple_files=True)
        if not uploads:
            st.info("Upload a patient to predict its dose.")
            return None
        data = [(upload.name, upload.getvalue()) for upload in uploads]
        key = "upload:" + hashlib.sha256(b"".join(name.encode() + blob for name, blob in data)).hexdigest()
        return key, remembered(key, lambda: read_upload(data))
    names = patients_under(root)
    if not names:
        st.info(f"No patient folders under {root}.")
        return None
    name = st.sidebar.selectbox("Patient folder", names)
    return f"root:{name}", remembered(f"root:{name}", lambda: sources.read_patient(resolve_under(root, name),
                                                                                  roi_names()))


def remembered(key: str, load) -> Patient:  # noqa: ANN001 - a function returning a Patient
    """The patient of ``key``, loaded once per session (the page reruns on every widget change)."""
    if st.session_state.get("patient_key") != key:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UnmappedRoiWarning)
            st.session_state["patient"] = load()
        # "<where the files were>: ..." -> "<patient id>: ...": an upload's temporary folder means nothing to a user
        st.session_state["patient_warnings"] = [f"{st.session_state['patient'].id}: {str(w.message).split(': ', 1)[-1]}"
                                                for w in caught if w.category is UnmappedRoiWarning]
        st.session_state["patient_key"] = key
    for message in st.session_state["patient_warnings"]:
        st.warning(message)
    return st.session_state["patient"]


def read_upload(data: list[tuple[str, bytes]]) -> Patient:
    """Unpack an upload into a temporary folder, read the patient into memory, and remove the folder."""
    with tempfile.TemporaryDirectory(prefix="dosepred-upload-") as tmp:
        if len(data) == 1 and data[0][0].lower().endswith(".zip"):
            return sources.read_patient(extract_zip(data[0][1], Path(tmp), data[0][0]), roi_names())
        return sources.read_patient(save_images(data, Path(tmp) / "upload"))


def predicted_dose(key: str, patient: Patient, device: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The predicted dose (and uncertainty, if the model gives one), computed once per session and device."""
    cache = st.session_state.setdefault("predictions", {})
    if (key, device) not in cache:
        require_grid(patient)
        with st.spinner(f"Predicting the dose of {patient.id} with {model_name()} on {device}…"):
            cache[(key, device)] = cached_predictor(model_name(), device).predict_with_uncertainty(patient, tta=True)
    return cache[(key, device)]


def overlay_names(patient: Patient, uncertainty: np.ndarray | None) -> list[str]:
    """Colourwashes besides the dose: the model's uncertainty, and against a reference the difference and gamma."""
    return (["uncertainty"] if uncertainty is not None else []) + (["difference", "gamma"] if patient.dose is not None else [])


def overlay(key: str, name: str, patient: Patient, dose: np.ndarray, uncertainty: np.ndarray | None) -> dict[str, np.ndarray]:
    """The chosen colourwash's volume (none for the dose); the 3 %/2 mm gamma map (up to 2) is computed once,
    and only when it is asked for."""
    if name == "uncertainty" and uncertainty is not None:
        return {name: uncertainty}
    if name == "difference" and patient.dose is not None:
        return {name: np.where(patient.possible_dose_mask, dose - patient.dose, np.nan)}
    if name == "gamma" and patient.dose is not None:
        return {name: cached_gamma(key, patient, dose, max_gamma=MAP_MAX_GAMMA).gamma}
    return {}


def cached_gamma(key: str, patient: Patient, dose: np.ndarray, *, max_gamma: float):  # noqa: ANN201 - GammaResult
    cache = st.session_state.setdefault("gamma", {})
    if (key, max_gamma) not in cache:
        with st.spinner("Computing gamma (3 %/2 mm)…"):
            cache[(key, max_gamma)] = gamma_index(patient.dose, dose, patient.spacing, max_gamma=max_gamma)
    return cache[(key, max_gamma)]


def view_controls(overlay_names: list[str], has_reference: bool) -> tuple[SliceView, str]:
    """The sidebar's display settings, and the layout: the three planes, or one plane side by side."""
    sidebar = st.sidebar
    sidebar.header("Display")
    layout = LAYOUTS[0]
    if has_reference:
        layout = sidebar.radio("Layout", LAYOUTS, help="Side by side: the prediction, the reference and the "
                               "colourwash of one plane")
    overlay = "dose"
    if overlay_names:
        overlay = sidebar.radio("Colourwash", ["dose", *overlay_names], horizontal=True,
                                index=1 if layout == LAYOUTS[1] else 0)
    plane = sidebar.radio("Plane", PLANES, horizontal=True) if layout == LAYOUTS[1] else "axial"
    preset = sidebar.selectbox("CT window", list(WINDOW_PRESETS))
    threshold = sidebar.slider("Dose colourwash from (Gy)", 0.0, 70.0, 5.0, 0.5)
    opacity = sidebar.slider("Colourwash opacity", 0.0, 1.0, 0.45, 0.05)
    mode = sidebar.radio("Isodose lines", ["Gy", "% of 70 Gy"], horizontal=True)
    if mode == "Gy":
        isodoses = sidebar.multiselect("Isodose levels (Gy)", [10.0, 20.0, 30.0, 40.0, 50.0, 56.0, 63.0, 70.0],
                                       default=[56.0, 63.0, 70.0])
    else:
        percent = sidebar.multiselect("Isodose levels (%)", [20, 50, 80, 90, 95, 100, 105], default=[50, 95])
        isodoses = [REFERENCE_GY * p / 100 for p in percent]
    shown = sidebar.multiselect("Structure outlines", list(ROIS), default=list(ROIS))
    return SliceView(plane=plane, window=WINDOW_PRESETS[preset], dose_threshold_gy=threshold, dose_opacity=opacity,
                     isodose_gy=tuple(isodoses), structures=tuple(shown), overlay=overlay), layout


def crosshair(key: str, patient: Patient) -> tuple[int, int, int]:
    """The crosshair's voxel for this patient (the middle at first); the slice sliders show and move it."""
    if st.session_state.get("crosshair", (None,))[0] != key:
        middle = tuple(size // 2 for size in patient.shape)
        st.session_state["crosshair"] = (key, middle)
        for plane in PLANES:
            st.session_state[f"slice-{plane}"] = middle[plane_axis(plane)] + 1
    return st.session_state["crosshair"][1]


def move_crosshair(voxel: tuple[int, int, int]) -> None:
    st.session_state["crosshair"] = (st.session_state["crosshair"][0], voxel)
    for plane in PLANES:
        st.session_state[f"slice-{plane}"] = voxel[plane_axis(plane)] + 1


def clicked() -> None:
    """A click on a view: the crosshair moves there, in every view (runs before the rerun)."""
    click = st.session_state["views"].click
    if click:
        move_crosshair(voxel_of(st.session_state["crosshair"][1], click["plane"], click["row"], click["column"]))


def slid(plane: str) -> None:
    voxel = list(st.session_state["crosshair"][1])
    voxel[plane_axis(plane)] = st.session_state[f"slice-{plane}"] - 1
    move_crosshair((voxel[0], voxel[1], voxel[2]))


def show_views(key: str, patient: Patient, dose: np.ndarray, overlays: dict[str, np.ndarray], view: SliceView,
               layout: str) -> None:
    """Linked views: slice sliders, then the panels (click: crosshair; wheel: zoom; hover: values)."""
    voxel = crosshair(key, patient)
    planes = PLANES if layout == LAYOUTS[0] else (view.plane,)
    for column, plane in zip(st.columns(len(planes)), planes):
        column.slider(f"{plane} slice", 1, patient.shape[plane_axis(plane)], key=f"slice-{plane}",
                      on_change=slid, args=(plane,))
    reference = patient.dose
    readouts = [Readout("CT", patient.ct, "HU", 1.0), Readout("predicted", dose, "Gy", 0.01)]
    if reference is not None:
        readouts += [Readout("reference", reference, "Gy", 0.01), Readout("difference", dose - reference, "Gy", 0.01)]
    readouts += [Readout(name, values, "Gy" if name == "uncertainty" else "", 0.01,
                         above=MAP_MAX_GAMMA if name == "gamma" else None)
                 for name, values in overlays.items() if name in ("gamma", "uncertainty")]
    dose_max = max(float(dose.max()), float(reference.max()) if reference is not None else 0.0)
    dose_view = SliceView(**{**view.__dict__, "overlay": "dose"})
    dose_scale = wash_scale(dose_view, dose_max, {})
    if layout == LAYOUTS[0]:
        scales = [wash_scale(view, dose_max, overlays)]
        roles = [("predicted", plane, overlays.get(view.overlay, dose), scales[0], view) for plane in PLANES]
    else:
        scales = [dose_scale]
        roles = [("predicted", view.plane, dose, dose_scale, dose_view),
                 ("reference", view.plane, reference, dose_scale, dose_view)]
        if view.overlay in overlays:
            scales.append(wash_scale(view, dose_max, overlays))
            roles.append((view.overlay, view.plane, overlays[view.overlay], scales[1], view))
    panels = []
    for number, (role, plane, wash, scale, panel_view) in enumerate(roles):
        index = voxel[plane_axis(plane)]
        entry = (key, role, plane, index, *astuple(panel_view), *(r.label for r in readouts))
        cached = cached_panel(entry, lambda: slice_panel(
            patient, plane, index, title=role.capitalize(), wash=wash, scale=scale, view=panel_view,
            isodose=reference if role == "reference" else dose, readouts=readouts))
        row_axis, column_axis = DISPLAY_AXES[plane]
        panels.append({**cached, "role": role, "number": number, "voxel": list(voxel),
                       "row_axis": row_axis, "column_axis": column_axis, "crosshair": list(crosshair_of(voxel, plane))})
    slice_views(panels, legend(view, scales, patient), key="views", on_click=clicked)
    st.caption("Click a view to move the crosshair in every view; wheel to zoom, drag to pan, double-click for the "
               "whole slice; the values under the cursor (or the crosshair) are read out below each view.")


def cached_panel(entry: tuple, build) -> dict[str, object]:  # noqa: ANN001 - a function returning a panel
    """A panel built once per patient, slice and display settings: a click redraws only what moved."""
    cache = st.session_state.setdefault("panels", {})
    entry = tuple(tuple(v) if isinstance(v, list) else v for v in entry)
    if entry not in cache:
        if len(cache) >= PANEL_CACHE:
            cache.pop(next(iter(cache)))  # the oldest
        cache[entry] = build()
    return cache[entry]


def show_dvh_and_metrics(patient: Patient, dose: np.ndarray) -> list[dict[str, object]]:
    title = f"DVH — {patient.id}" + (": predicted solid, reference dashed" if patient.dose is not None else "")
    st.altair_chart(dvh_chart(dvh_records(patient, dose), title=title), width="stretch")
    rows, scores = metrics_rows(patient, dose)
    if scores:
        first, second = st.columns(2)
        first.metric("OpenKBP dose score", f"{scores['dose_score']:.3f} Gy")
        second.metric("OpenKBP DVH score", f"{scores['dvh_score']:.3f} Gy")
    st.subheader("Metrics")
    readable = [{HEADERS.get(column, column): value for column, value in row.items()}
                for row in sorted(rows, key=lambda row: row["roi"] not in TARGETS)]
    st.dataframe(coloured(readable, "structure"), width="stretch", hide_index=True)
    return rows


def coloured(rows: list[dict[str, object]], column: str) -> pd.io.formats.style.Styler:
    """A table whose ``column`` cells carry their structure's colour (the one of the views and the DVH)."""
    def colour(value: object) -> str:
        roi = str(value).split(" ", 1)[0]
        return f"background-color: {ROI_COLOURS[roi]}40" if roi in ROI_COLOURS else ""

    return pd.DataFrame(rows).style.map(colour, subset=[column]).format(precision=2)


def show_review(key: str, patient: Patient, dose: np.ndarray) -> None:
    """Gamma pass rate, the plan objectives (predicted and reference) and the one-file report, on demand."""
    st.subheader("Plan objectives")
    if patient.dose is not None:
        result = cached_gamma(key, patient, dose, max_gamma=1.0)
        st.metric("Gamma pass rate (3 %/2 mm, global, 10 % threshold)", f"{result.pass_rate:.1f} %")
    rows = check_objectives(patient, dose, shipped_objectives())
    st.dataframe(coloured([{column: ("✓ met" if value else "✗ missed") if column.endswith(" met") else value
                            for column, value in row.items()} for row in rows], "objective"),
                 width="stretch", hide_index=True)
    st.download_button("Download the review report (HTML)", lambda: report_bytes(patient, dose),
                       f"{patient.id}_review.html", mime="text/html", on_click="ignore")


def report_bytes(patient: Patient, dose: np.ndarray) -> bytes:
    """The one-file review report, written when its download is clicked (not on every rerun)."""
    with tempfile.TemporaryDirectory() as tmp:
        write_report(patient, dose, Path(tmp) / "report.html", model=model_name(), objectives=shipped_objectives())
        return (Path(tmp) / "report.html").read_bytes()


def dose_bytes(patient: Patient, dose: np.ndarray, name: str, output_format: OutputFormat) -> bytes:
    """A dose file, written when its download is clicked."""
    with tempfile.TemporaryDirectory() as tmp:
        write_dose(patient, dose, Path(tmp) / name, output_format, model=model_name())
        return (Path(tmp) / name).read_bytes()


@st.cache_resource(show_spinner=False)
def shipped_objectives() -> list:
    return load_objectives()


def show_roi_mapping(patient: Patient) -> None:
    """For a DICOM patient: which of its ROIs became which model structure, and which none."""
    if patient.clinic is None:
        return
    mapping = patient.clinic.mapping
    with st.expander("ROI names and the structures they became"):
        st.table({"ROI": [name for name, _ in mapping.table()],
                  "used as": [structure if structure != "-" else "(not used)" for _, structure in mapping.table()]})
        st.caption(f"Possible-dose region: {patient.clinic.body_source}.")


def show_downloads(patient: Patient, dose: np.ndarray, rows: list[dict[str, object]]) -> None:
    st.subheader("Downloads")
    formats = [(OutputFormat.nifti, f"{patient.id}_dose.nii.gz", "Dose (NIfTI)"),
               (OutputFormat.rtdose, f"{patient.id}_rtdose.dcm", "Dose (DICOM RT Dose)")]
    if patient.clinic is None:  # an OpenKBP CSV exists on OpenKBP's grid only
        formats.insert(1, (OutputFormat.openkbp, f"{patient.id}.csv", "Dose (OpenKBP CSV)"))
    columns = st.columns(len(formats) + 1)
    for column, (output_format, name, label) in zip(columns, formats):
        column.download_button(label, lambda f=output_format, n=name: dose_bytes(patient, dose, n, f), name,
                               on_click="ignore")
    columns[-1].download_button("DVH metrics (CSV)", metrics_csv(rows), f"{patient.id}_dvh_metrics.csv", on_click="ignore")
    if patient.clinic is not None:
        st.caption("NIfTI and RT Dose lie on the patient's own CT, in its frame of reference (same "
                   "FrameOfReferenceUID and study as the CT).")
    else:
        st.caption("RT Dose frame of reference: a new one, the same as dosepred's NIfTI files (voxel (0,0,0) at the "
                   "origin, x towards the patient's left, y posterior, z superior); it does not line up with the "
                   "original planning CT, which OpenKBP does not provide.")


def main() -> None:
    st.set_page_config(page_title="dosepred", layout="wide")
    st.title("dosepred — dose prediction viewer")
    st.warning(NOTICE)
    root = data_root()
    device = "cpu"
    if torch.cuda.is_available():
        device = st.sidebar.selectbox("Device", ["cuda", "cpu"])
    try:
        chosen = choose_patient(root)
        if chosen is None:
            return
        key, patient = chosen
        dose, uncertainty = predicted_dose(key, patient, device)
    except PatientDataError as error:
        st.error(f"Cannot use this patient: {error}")
        return
    st.caption(f"{patient.id}: grid {'x'.join(map(str, patient.shape))}, spacing "
               f"{' x '.join(f'{s:g}' for s in patient.spacing)} mm, model {model_name()}"
               + ("; the clinic CT resampled onto the model's grid" if patient.clinic is not None else ""))
    show_roi_mapping(patient)
    view, layout = view_controls(overlay_names(patient, uncertainty), patient.dose is not None)
    show_views(key, patient, dose, overlay(key, view.overlay, patient, dose, uncertainty), view, layout)
    rows = show_dvh_and_metrics(patient, dose)
    show_review(key, patient, dose)
    show_downloads(patient, dose, rows)


main()
