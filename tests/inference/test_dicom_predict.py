"""`dosepred predict` on a clinic's DICOM: folders and zips in, RT Dose and NIfTI on the CT out."""

from __future__ import annotations

import shutil
import warnings
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from typer.testing import CliRunner

from dosepred.cli import app
from dosepred.inference.loader import load_predictor
from dosepred.inference.predictor import Predictor
from dosepred.io import clinic
from dosepred.io.dicom import read_rt_dose
from dosepred.io.dicom_export import write_dicom_patient
from dosepred.io.dicom_in import read_dicom_patient
from dosepred.io.phantom import make_phantom
from dosepred.metrics.openkbp import OpenKBPScorer
from tests.conftest import SAMPLE, requires_openkbp

runner = CliRunner()


@pytest.fixture(scope="module")
def clinic_batch(tmp_path_factory) -> Path:
    """Two phantom patients (64^3) as DICOM folders: CT at 3 mm, TG-263 names, one ROI the models do not know."""
    batch = tmp_path_factory.mktemp("clinic") / "batch"
    patient = make_phantom((64, 64, 64))
    for name in ("clinic_1", "clinic_2"):
        write_dicom_patient(patient, batch / name, pixel_spacing=3.0, extra_rois={"CTV_7000": "PTV70"})
    return batch


def predict(*args: str):
    return runner.invoke(app, ["predict", *args])


def test_a_zip_of_dicom_patients_gives_rt_doses_on_their_cts(tiny_model: Path, clinic_batch: Path, tmp_path: Path) -> None:
    archive = tmp_path / "batch.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for path in sorted(clinic_batch.rglob("*.dcm")):
            handle.write(path, path.relative_to(clinic_batch))
    result = predict("-i", str(archive), "-o", str(tmp_path / "out"), "-m", str(tiny_model), "--no-tta")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["clinic_1.dcm", "clinic_2.dcm"]
    assert "clinic_1: 1 ROI(s) left out, not known to the model: CTV_7000" in result.output.replace("\n", "")
    rt_dose = pydicom.dcmread(tmp_path / "out" / "clinic_1.dcm")
    ct = pydicom.dcmread(clinic_batch / "clinic_1" / "CT_0000.dcm")
    assert rt_dose.FrameOfReferenceUID == ct.FrameOfReferenceUID and rt_dose.Modality == "RTDOSE"
    assert rt_dose.ManufacturerModelName == f"{tiny_model.parent.name}/best"  # the folder, not the machine's path
    assert rt_dose.SoftwareVersions.startswith("dosepred ")
    assert read_rt_dose(tmp_path / "out" / "clinic_1.dcm")[0].max() > 0


def test_nifti_lies_on_the_ct_and_openkbp_csv_is_refused(tiny_model: Path, clinic_batch: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    result = predict("-i", str(clinic_batch / "clinic_1"), "-o", str(tmp_path / "nii"), "-m", str(tiny_model),
                     "--no-tta", "--format", "nifti")
    assert result.exit_code == 0, result.output
    image = nib.load(tmp_path / "nii" / "clinic_1.nii.gz")
    assert image.header["descrip"].item().decode().startswith("predicted dose (Gy), dosepred ")  # what, whose
    ct = pydicom.dcmread(clinic_batch / "clinic_1" / "CT_0000.dcm")
    assert image.shape == (ct.Columns, ct.Rows, len(list((clinic_batch / "clinic_1").glob("CT_*.dcm"))))
    # Voxel (0, 0, 0) is the first CT pixel: LPS (x, y) -> RAS (-x, -y).
    np.testing.assert_allclose(image.affine[:3, 3], [-ct.ImagePositionPatient[0], -ct.ImagePositionPatient[1],
                                                     ct.ImagePositionPatient[2]], atol=1e-3)
    predicted = []  # refused before the prediction, not after it
    monkeypatch.setattr(Predictor, "predict_with_uncertainty", lambda *args, **kwargs: predicted.append(1))
    result = predict("-i", str(clinic_batch / "clinic_1"), "-o", str(tmp_path / "csv"), "-m", str(tiny_model),
                     "--format", "openkbp-csv")
    assert result.exit_code == 1 and "use --format rtdose or --format nifti" in result.output.replace("\n", "")
    assert not predicted


@pytest.mark.parametrize("flag", ["PTV_High", "=70", "PTV_High=high", "PTV_High=-5"])
def test_a_malformed_ptv_flag_is_refused(tiny_model: Path, clinic_batch: Path, tmp_path: Path, flag: str) -> None:
    result = predict("-i", str(clinic_batch), "-o", str(tmp_path), "-m", str(tiny_model), "--ptv", flag)
    assert result.exit_code == 2 and "expected NAME=GY" in result.output


@requires_openkbp
def test_a_report_takes_the_ptv_and_roi_name_flags_as_predict_does(tiny_model: Path, clinic_batch: Path,
                                                                   tmp_path: Path) -> None:
    folder = shutil.copytree(clinic_batch / "clinic_1", tmp_path / "clinic_1")
    structures = pydicom.dcmread(folder / "RS.dcm")
    for roi in structures.StructureSetROISequence:
        roi.ROIName = roi.ROIName.replace("PTV_", "Target_")
    structures.save_as(folder / "RS.dcm")
    report = ["report", "-i", str(folder), "-o", str(tmp_path / "r.html"), "-m", str(tiny_model), "--no-tta"]
    refused = runner.invoke(app, report)
    assert refused.exit_code == 2 and "--ptv" in refused.output and not (tmp_path / "r.html").exists()
    result = runner.invoke(app, [*report, "--ptv", "Target_7000=70"])
    assert result.exit_code == 0, result.output
    assert "warning" in result.output and "CTV_7000" in result.output  # the unmapped ROI, said once and plainly
    assert "PTV70" in (tmp_path / "r.html").read_text()


def test_the_dicom_route_predicts_a_real_patient_as_the_openkbp_route_does(tmp_path: Path) -> None:
    """pt_201 (5.42 x 5.42 x 3 mm voxels) as a 1.95 mm CT with TG-263 names and a shifted origin: read back
    onto the 3.9 x 3.9 x 2.5 mm working grid, predicted, its RT Dose brought back onto the OpenKBP grid."""
    from dosepred.io.openkbp_csv import read_patient

    patient = read_patient(SAMPLE / "validation-pats" / "pt_201")
    grid = write_dicom_patient(patient, tmp_path / "pt_201", pixel_spacing=1.953, origin=(-231.7, -152.3, 87.5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every ROI maps: no warning
        read = read_dicom_patient(tmp_path / "pt_201")
    predictor = load_predictor(None, device=torch.device("cpu"))
    from dosepred.io.dicom import write_rt_dose

    write_rt_dose(read, predictor.predict(read, tta=False), tmp_path / "rd.dcm")
    values, rt_grid = read_rt_dose(tmp_path / "rd.dcm")
    back = clinic.to_patient_axes(clinic.resample(values, rt_grid, grid, linear=True, default=0.0))
    back = np.where(patient.possible_dose_mask, back, 0.0)
    direct = predictor.predict(patient, tta=False)
    scores = {}
    for route, dose in (("direct", direct), ("dicom", back)):
        scorer = OpenKBPScorer()
        scorer.add(patient.id, patient.dose, dose, structures=patient.structure_stack(),
                   possible_dose_mask=patient.possible_dose_mask, voxel_volume_mm3=patient.voxel_volume_mm3)
        scores[route] = scorer.evaluation
    # pt_201 differs most of the 10 patients of benchmarks/dicom_round_trip.py: its 5.4 mm voxels are resampled
    # twice. Measured here with the default model (stages 1-6): dose 2.500 -> 2.610 Gy, mean |DICOM - direct|
    # 0.93 Gy inside the possible-dose mask (0.80 in the benchmark with stages 1-3 and mirroring). One patient's
    # DVH score is too volatile to compare (1.837 -> 1.712 Gy with stages 1-4, 2.458 -> 1.819 with stages 1-6),
    # so the two predictions are compared voxel by voxel instead.
    inside = patient.possible_dose_mask
    assert float(np.abs(back - direct)[inside].mean()) < 1.25
    assert abs(scores["dicom"].dose_score - scores["direct"].dose_score) < 0.25
    shutil.rmtree(tmp_path / "pt_201")
