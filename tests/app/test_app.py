"""The viewer's flow with Streamlit's AppTest: opens on the phantom with its prediction, switches sources,
and answers bad input with a message while it keeps working."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("streamlit", reason="the viewer needs the 'app' extra")
from streamlit.testing.v1 import AppTest  # noqa: E402

from dosepred.io import openkbp_csv, pack  # noqa: E402
from dosepred.io.phantom import make_phantom  # noqa: E402

APP = str(Path(__file__).resolve().parents[2] / "dosepred" / "app" / "main.py")


def run(monkeypatch, root: Path | None = None) -> AppTest:  # noqa: D103
    if root is None:
        monkeypatch.delenv("DOSEPRED_DATA_ROOT", raising=False)
    else:
        monkeypatch.setenv("DOSEPRED_DATA_ROOT", str(root))
    return AppTest.from_file(APP, default_timeout=180).run()


def panels(at: AppTest) -> list[dict]:
    """The slice panels the linked-views component was given."""
    (views,) = at.get("bidi_component")
    return json.loads(views.proto.json)["panels"]


def test_opens_on_the_phantom_with_its_prediction(monkeypatch) -> None:
    at = run(monkeypatch)
    assert not at.exception
    assert "Research use only" in at.warning[0].value
    assert [m.label for m in at.metric] == ["OpenKBP dose score", "OpenKBP DVH score",
                                            "Gamma pass rate (3 %/2 mm, global, 10 % threshold)"]
    assert len(at.get("vega_lite_chart")) == 1 and "DVH" in at.get("vega_lite_chart")[0].proto.spec
    assert [panel["title"] for panel in panels(at)] == [
        "Predicted · axial 65/128", "Predicted · coronal 65/128", "Predicted · sagittal 65/128"]
    assert [r["label"] for r in panels(at)[0]["readouts"]] == ["CT", "predicted", "reference", "difference"]
    # NIfTI, CSV, RT Dose, DVH table and the report: each written only when it is clicked
    assert len(at.dataframe) == 2 and len(at.get("download_button")) == 5
    assert at.dataframe[0].value.iloc[0]["structure"] == "PTV56"  # targets first, readable headers
    assert "SpinalCord D0.1cc < 45 Gy" in set(at.dataframe[1].value["objective"])


def test_a_slice_slider_moves_the_crosshair_in_every_view(monkeypatch) -> None:
    at = run(monkeypatch)
    next(slider for slider in at.slider if slider.label == "coronal slice").set_value(30).run()
    axial, coronal, sagittal = panels(at)
    assert coronal["title"] == "Predicted · coronal 30/128" and axial["title"] == "Predicted · axial 65/128"
    assert axial["voxel"] == [29, 64, 64] and axial["crosshair"] == [29, 64]  # axial rows run anterior-posterior
    assert sagittal["crosshair"] == [64, 29]  # sagittal columns too


def test_side_by_side_shows_prediction_reference_and_difference(monkeypatch) -> None:
    at = run(monkeypatch)
    next(radio for radio in at.sidebar.radio if radio.label == "Layout").set_value("Side by side").run()
    assert not at.exception
    assert [panel["title"] for panel in panels(at)] == [
        "Predicted · axial 65/128", "Reference · axial 65/128", "Difference · axial 65/128"]
    next(radio for radio in at.sidebar.radio if radio.label == "Plane").set_value("sagittal").run()
    assert [panel["plane"] for panel in panels(at)] == ["sagittal"] * 3


def test_display_controls_redraw_without_error(monkeypatch) -> None:
    at = run(monkeypatch)
    at.sidebar.selectbox[0].set_value("bone")
    next(radio for radio in at.sidebar.radio if radio.label == "Isodose lines").set_value("% of 70 Gy")
    at.slider[0].set_value(20)
    at.run()
    assert not at.exception and len(panels(at)) == 3


def test_patients_under_the_data_root_and_a_broken_one(monkeypatch, tmp_path: Path) -> None:
    patient = make_phantom()
    for pid in ("pt_1", "pt_2"):
        patient.id = pid
        openkbp_csv.write_patient(patient, tmp_path / pid)
    (tmp_path / "pt_2" / "ct.csv").write_text("not,a\nvalid file\n")
    at = run(monkeypatch, tmp_path)
    at.sidebar.radio[0].set_value("Patient under the data root").run()
    assert not at.exception and not at.error
    assert "pt_1" in at.caption[0].value
    at.sidebar.selectbox[0].set_value("pt_2").run()
    assert not at.exception
    assert "ct.csv" in at.error[0].value and "wrong header" in at.error[0].value
    at.sidebar.radio[0].set_value("Phantom (embedded)").run()  # the app keeps working
    assert not at.exception and not at.error and len(at.metric) == 3


def test_unsafe_patients_under_the_data_root_are_refused(monkeypatch, tmp_path: Path) -> None:
    root, escape = tmp_path / "root", f"dosepred-escape-{tmp_path.name}"
    pack.write_patient(make_phantom(), root / "evil.dpk")
    header_length = int.from_bytes((root / "evil.dpk").read_bytes()[4:8], "little")
    data = (root / "evil.dpk").read_bytes()
    header = {**json.loads(data[8 : 8 + header_length]), "id": f"../{escape}"}  # downloads would land outside
    (root / "evil.dpk").write_bytes(pack.sealed(json.dumps(header).encode(), data[8 + header_length : -4]))
    openkbp_csv.write_patient(make_phantom(), root / "pt_link")
    (tmp_path / "secret.csv").write_text("SECRET first line\n")
    (root / "pt_link" / "dose.csv").unlink()
    (root / "pt_link" / "dose.csv").symlink_to(tmp_path / "secret.csv")
    at = run(monkeypatch, root)
    at.sidebar.radio[0].set_value("Patient under the data root").run()
    at.sidebar.selectbox[0].set_value("evil.dpk").run()
    assert not at.exception and "patient id must be" in at.error[0].value
    at.sidebar.selectbox[0].set_value("pt_link").run()
    assert not at.exception and "symbolic links are not followed" in at.error[0].value
    assert "SECRET" not in at.error[0].value
    assert not list(Path(tempfile.gettempdir()).glob(f"{escape}*")) and not list(tmp_path.glob(f"{escape}*"))


def test_a_dicom_target_named_at_the_clinics_will_opens_with_app_ptv(monkeypatch, tmp_path: Path) -> None:
    import pydicom
    from typer.testing import CliRunner

    from dosepred.cli import app
    from dosepred.io.dicom_export import write_dicom_patient

    folder = tmp_path / "root" / "clinic_1"
    write_dicom_patient(make_phantom((32, 32, 32)), folder, pixel_spacing=4.0)
    structures = pydicom.dcmread(folder / "RS.dcm")
    for roi in structures.StructureSetROISequence:
        roi.ROIName = roi.ROIName.replace("PTV_", "Target_")
    structures.save_as(folder / "RS.dcm")
    for ptv in ({}, {"Target_7000": 70}):  # what `dosepred app --ptv Target_7000=70` passes on
        monkeypatch.setenv("DOSEPRED_PTV", json.dumps(ptv))
        at = run(monkeypatch, tmp_path / "root")
        at.sidebar.radio[0].set_value("Patient under the data root").run()
        assert not at.exception
        if ptv:
            assert not at.error
        else:
            assert "no usable target" in at.error[0].value and "--ptv" in at.error[0].value
    assert "PTV70" in set(at.dataframe[0].value["structure"])
    refused = CliRunner().invoke(app, ["app", "--ptv", "Target_7000"])
    assert refused.exit_code == 2 and "expected NAME=GY" in refused.output


def test_uncertainty_overlay_when_the_model_provides_it(monkeypatch, two_output_model: Path) -> None:
    monkeypatch.setenv("DOSEPRED_MODEL", str(two_output_model))
    at = run(monkeypatch)
    assert not at.exception
    colourwash = [radio for radio in at.sidebar.radio if radio.label == "Colourwash"]
    assert colourwash and colourwash[0].options == ["dose", "uncertainty", "difference", "gamma"]
    colourwash[0].set_value("uncertainty").run()
    assert not at.exception and "uncertainty" in [r["label"] for r in panels(at)[0]["readouts"]]


def test_no_uncertainty_choice_for_single_output_models(monkeypatch) -> None:
    monkeypatch.setenv("DOSEPRED_MODEL", "unet-beams-128")
    at = run(monkeypatch)
    colourwash = [radio for radio in at.sidebar.radio if radio.label == "Colourwash"]
    assert colourwash[0].options == ["dose", "difference", "gamma"]  # against the phantom's reference dose
    for overlay in ("difference", "gamma"):
        colourwash[0].set_value(overlay).run()
        assert not at.exception and len(panels(at)) == 3
