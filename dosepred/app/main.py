"""dosepred viewer: predict a patient's dose and inspect it (slices, isodoses, DVH, metrics, downloads).

Run with ``dosepred app [--port N] [--data-root DIR]``. A thin face over library functions: nothing here
computes anything the library does not.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import streamlit as st
import torch

from dosepred.io import sources
from dosepred.io.errors import PatientDataError
from dosepred.io.patient import ROIS, TARGETS, Patient, require_grid
from dosepred.io.phantom import make_phantom
from dosepred.io.roi_names import UnmappedRoiWarning
from dosepred.io.uploads import extract_zip, patients_under, resolve_under, save_images
from dosepred.inference.ensemble import EnsemblePredictor
from dosepred.inference.loader import load_predictor
from dosepred.models import DEFAULT_MODEL
from dosepred.inference.predictor import Predictor
from dosepred.inference.writers import OutputFormat, write_dose
from dosepred.metrics.clinical import check_objectives, load_objectives
from dosepred.metrics.gamma import gamma_index
from dosepred.visual.dvh import dvh_chart, dvh_records, metrics_rows
from dosepred.visual.report import write_report
from dosepred.visual.slices import PLANES, WINDOW_PRESETS, SliceView, plane_axis, slice_figure

NOTICE = "Research use only — not for clinical decisions."
HEADERS = {"roi": "structure", "metric": "metric", "predicted_gy": "predicted (Gy)", "reference_gy": "reference (Gy)",
           "difference_gy": "predicted − reference (Gy)"}
DATA_ROOT_VARIABLE = "DOSEPRED_DATA_ROOT"
MODEL_VARIABLE = "DOSEPRED_MODEL"
REFERENCE_GY = 70.0
SLICE_CACHE = 96  # drawn slices kept per session


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
    return f"root:{name}", remembered(f"root:{name}", lambda: sources.read_patient(resolve_under(root, name)))


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
            return sources.read_patient(extract_zip(data[0][1], Path(tmp)))
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
        return {name: cached_gamma(key, patient, dose, max_gamma=2.0).gamma}
    return {}


def cached_gamma(key: str, patient: Patient, dose: np.ndarray, *, max_gamma: float):  # noqa: ANN201 - GammaResult
    cache = st.session_state.setdefault("gamma", {})
    if (key, max_gamma) not in cache:
        with st.spinner("Computing gamma (3 %/2 mm)…"):
            cache[(key, max_gamma)] = gamma_index(patient.dose, dose, patient.spacing, max_gamma=max_gamma)
    return cache[(key, max_gamma)]


def view_controls(overlay_names: list[str]) -> SliceView:
    sidebar = st.sidebar
    sidebar.header("Display")
    overlay = "dose"
    if overlay_names:
        overlay = sidebar.radio("Colourwash", ["dose", *overlay_names], horizontal=True)
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
    return SliceView(window=WINDOW_PRESETS[preset], dose_threshold_gy=threshold, dose_opacity=opacity,
                     isodose_gy=tuple(isodoses), structures=tuple(shown), overlay=overlay)


def show_slices(key: str, patient: Patient, dose: np.ndarray, overlays: dict[str, np.ndarray], view: SliceView) -> None:
    for column, plane in zip(st.columns(3), PLANES):
        with column:
            size = patient.shape[plane_axis(plane)]
            index = st.slider(f"{plane} slice", 1, size, size // 2 + 1, key=f"slice-{plane}") - 1
            st.image(slice_png(key, patient, dose, SliceView(**{**view.__dict__, "plane": plane, "index": index}), overlays))


def slice_png(key: str, patient: Patient, dose: np.ndarray, view: SliceView, overlays: dict[str, np.ndarray]) -> bytes:
    """A slice drawn once per patient and view: moving one slider redraws that slice only."""
    cache = st.session_state.setdefault("slices", {})
    entry = (key, *(tuple(v) if isinstance(v, (list, tuple)) else v for v in view.__dict__.values()))
    if entry not in cache:
        buffer = io.BytesIO()
        slice_figure(patient, dose, view, overlays).savefig(buffer, format="png", dpi=100)
        if len(cache) >= SLICE_CACHE:
            cache.pop(next(iter(cache)))  # the oldest
        cache[entry] = buffer.getvalue()
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
    st.dataframe(readable, width="stretch", hide_index=True)
    return rows


def show_review(key: str, patient: Patient, dose: np.ndarray) -> None:
    """Gamma pass rate, the plan objectives (predicted and reference) and the one-file report, on demand."""
    st.subheader("Plan objectives")
    if patient.dose is not None:
        result = cached_gamma(key, patient, dose, max_gamma=1.0)
        st.metric("Gamma pass rate (3 %/2 mm, global, 10 % threshold)", f"{result.pass_rate:.1f} %")
    rows = check_objectives(patient, dose, shipped_objectives())
    st.dataframe([{column: ("✓ met" if value else "✗ missed") if column.endswith(" met") else value
                   for column, value in row.items()} for row in rows], width="stretch", hide_index=True)
    if st.button("Build the review report (HTML)"):
        with tempfile.TemporaryDirectory() as tmp, st.spinner("Writing the report…"):
            write_report(patient, dose, Path(tmp) / "report.html", model=model_name(), objectives=shipped_objectives())
            st.session_state["report"] = (key, (Path(tmp) / "report.html").read_bytes())
    if st.session_state.get("report", ("", b""))[0] == key:
        st.download_button("Download the report (HTML)", st.session_state["report"][1], f"{patient.id}_review.html")


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


def show_downloads(key: str, patient: Patient, dose: np.ndarray, rows: list[dict[str, object]]) -> None:
    st.subheader("Downloads")
    formats = [(OutputFormat.nifti, f"{patient.id}_dose.nii.gz", "Dose (NIfTI)"),
               (OutputFormat.rtdose, f"{patient.id}_rtdose.dcm", "Dose (DICOM RT Dose)")]
    if patient.clinic is None:  # an OpenKBP CSV exists on OpenKBP's grid only
        formats.insert(1, (OutputFormat.openkbp, f"{patient.id}.csv", "Dose (OpenKBP CSV)"))
    if st.session_state.get("downloads", ("",))[0] != key:  # built once per patient, not on every rerun
        with tempfile.TemporaryDirectory() as tmp:
            files = {}
            for output_format, name, _ in formats:
                write_dose(patient, dose, Path(tmp) / name, output_format)
                files[name] = (Path(tmp) / name).read_bytes()
        st.session_state["downloads"] = (key, files)
    files = st.session_state["downloads"][1]
    table = ",".join(rows[0]) + "\n" + "\n".join(",".join(str(v) for v in row.values()) for row in rows) + "\n"
    columns = st.columns(len(formats) + 1)
    for column, (_, name, label) in zip(columns, formats):
        column.download_button(label, files[name], name)
    columns[-1].download_button("DVH metrics (CSV)", table, f"{patient.id}_dvh_metrics.csv")
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
    view = view_controls(overlay_names(patient, uncertainty))
    show_slices(key, patient, dose, overlay(key, view.overlay, patient, dose, uncertainty), view)
    rows = show_dvh_and_metrics(patient, dose)
    show_review(key, patient, dose)
    show_downloads(key, patient, dose, rows)


main()
