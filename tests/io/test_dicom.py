"""The DICOM route: a CT series + RTSTRUCT in, the working grid, the dose back on the CT, RT Dose out."""

from __future__ import annotations

import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dosepred.io import clinic, sources
from dosepred.io.dicom import DOSE_SUMMATION_TYPE, read_rt_dose, write_rt_dose
from dosepred.io.dicom_export import write_dicom_patient
from dosepred.io.dicom_in import read_dicom_patient
from dosepred.io.errors import PatientDataError
from dosepred.io.phantom import make_phantom
from dosepred.io.roi_names import RoiNames, UnmappedRoiWarning

ORIGIN = (-231.7, -152.3, 87.5)  # far from 0: a reader that ignored the geometry would miss
requires_dciodvfy = pytest.mark.skipif(shutil.which("dciodvfy") is None,
                                       reason="dciodvfy not installed (apt install dicom3tools; .ci/run installs it)")


@pytest.fixture(scope="module")
def phantom_dicom(tmp_path_factory) -> tuple[Path, object, clinic.Grid]:
    """The 32^3 phantom (18.75 x 18.75 x 12 mm voxels) with a 3000 HU marker voxel, as a 4 mm CT + RTSTRUCT."""
    patient = make_phantom((32, 32, 32))
    patient.ct[10, 20, 12] = 3000.0
    folder = tmp_path_factory.mktemp("dicom") / "clinic_1"
    grid = write_dicom_patient(patient, folder, pixel_spacing=4.0, origin=ORIGIN, extra_rois={"CTV_7000": "PTV70"})
    return folder, patient, grid


def read_quietly(folder: Path, names: RoiNames | None = None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnmappedRoiWarning)
        return read_dicom_patient(folder, names)


def mass_centre_lps(values_zyx: np.ndarray, grid: clinic.Grid) -> np.ndarray:
    index = (np.indices(values_zyx.shape).reshape(3, -1) * values_zyx.ravel()).sum(1) / values_zyx.sum()
    return grid.to_lps(index[::-1][None])[0]


def test_a_known_point_lands_at_the_same_patient_coordinate(tmp_path: Path) -> None:
    patient = make_phantom((32, 32, 32))  # 18.75 x 18.75 x 12 mm voxels
    centre = np.array([10.3, 20.6, 12.4])  # a point between voxel centres, patient axes
    distance = np.linalg.norm((np.indices(patient.shape).T - centre).T * np.reshape(patient.spacing, (3, 1, 1, 1)), axis=0)
    patient.ct = (3000 * np.exp(-0.5 * (distance / 30.0) ** 2) - 1000).astype(np.float32)  # a smooth cloud of HU
    grid = write_dicom_patient(patient, tmp_path / "clinic_1", pixel_spacing=4.0, origin=ORIGIN)
    read = read_quietly(tmp_path / "clinic_1")
    assert read.shape == (128, 128, 128) and read.spacing == (4.688, 4.688, 3.3)  # 600 mm / 128; 12 mm slices kept to 3.3
    expected = grid.to_lps(centre[[1, 0, 2]][None])[0]  # index (x, y, z) = patient axes (1, 0, 2)
    cloud = clinic.from_patient_axes(read.ct + 1000)
    np.testing.assert_allclose(mass_centre_lps(cloud, read.clinic.working_grid), expected, atol=0.5)
    # And back: a dose cloud on the working grid lands on the CT where the working grid puts it.
    centre = np.array([62.0, 66.0, 64.0])  # inside the body, which clips the dose on the CT
    distance = np.linalg.norm((np.indices(read.shape).T - centre).T * np.reshape(read.spacing, (3, 1, 1, 1)), axis=0)
    dose = (60 * np.exp(-0.5 * (distance / 15.0) ** 2)).astype(np.float32)
    on_ct = read.clinic.dose_on_ct(dose)
    expected = read.clinic.working_grid.to_lps(centre[[1, 0, 2]][None])[0]
    np.testing.assert_allclose(mass_centre_lps(on_ct, read.clinic.ct_grid), expected, atol=1.0)


def test_structures_and_body_come_back_from_the_contours(phantom_dicom) -> None:
    folder, patient, _ = phantom_dicom
    with pytest.warns(UnmappedRoiWarning, match="CTV_7000"):
        read = read_dicom_patient(folder)
    assert set(read.structures) == set(patient.structures)
    working_voxel, phantom_voxel = np.prod(read.spacing), np.prod(patient.spacing)
    for roi, mask in patient.structures.items():  # volumes agree within the coarse phantom's partial voxels
        assert read.structures[roi].sum() * working_voxel == pytest.approx(mask.sum() * phantom_voxel, rel=0.25), roi
    assert read.possible_dose_mask.sum() * working_voxel == pytest.approx(
        patient.possible_dose_mask.sum() * phantom_voxel, rel=0.1)
    assert read.clinic.body_source == "External"
    assert read.clinic.attributes["FrameOfReferenceUID"] == pydicom.dcmread(next(folder.glob("CT_*.dcm"))).FrameOfReferenceUID


def test_without_a_body_roi_the_ct_gives_the_body(phantom_dicom, tmp_path: Path) -> None:
    folder, _, _ = phantom_dicom
    names = tmp_path / "names.yaml"
    names.write_text((Path(clinic.__file__).with_name("roi_names.yaml")).read_text().replace("body: [External,", "body: ["))
    read = read_quietly(folder, RoiNames.load(names))
    assert read.clinic.body_source.startswith("CT above")
    with_roi = read_quietly(folder)
    overlap = (read.possible_dose_mask & with_roi.possible_dose_mask).sum() / with_roi.possible_dose_mask.sum()
    assert overlap > 0.9


def test_rt_dose_on_the_ct_frame_is_conformant_and_round_trips(phantom_dicom, tmp_path: Path) -> None:
    folder, _, _ = phantom_dicom
    read = read_quietly(folder)
    dose = np.where(read.possible_dose_mask, 30.0, 0.0).astype(np.float32)
    write_rt_dose(read, dose, tmp_path / "rd.dcm")
    ds = pydicom.dcmread(tmp_path / "rd.dcm")
    ct = pydicom.dcmread(next(folder.glob("CT_*.dcm")))
    for key in ("FrameOfReferenceUID", "StudyInstanceUID", "PatientID", "ImageOrientationPatient", "PixelSpacing"):
        assert ds[key].value == ct[key].value, key
    assert ds.DoseSummationType == DOSE_SUMMATION_TYPE and "ReferencedRTPlanSequence" not in ds
    values, grid = read_rt_dose(tmp_path / "rd.dcm")
    assert values.max() == pytest.approx(30.0, abs=1e-3)
    # The RT Dose is a box of the CT grid: its voxels sit on CT voxel centres.
    index = read.clinic.ct_grid.to_index(np.asarray(grid.origin)[None])[0]
    np.testing.assert_allclose(index, np.round(index), atol=1e-3)


def test_rt_dose_of_an_openkbp_patient_keeps_dosepreds_own_frame(phantom_small, tmp_path: Path) -> None:
    write_rt_dose(phantom_small, phantom_small.dose, tmp_path / "rd.dcm")
    values, grid = read_rt_dose(tmp_path / "rd.dcm")
    back = clinic.resample(values, grid, clinic.own_frame_grid(phantom_small), linear=False, default=-1.0)
    np.testing.assert_allclose(clinic.to_patient_axes(back), phantom_small.dose, atol=2e-3)
    # The most superior slice (axis-2 index 0) is the last frame, at z = 0.
    ds = pydicom.dcmread(tmp_path / "rd.dcm")
    assert float(ds.ImagePositionPatient[2]) + float(ds.GridFrameOffsetVector[-1]) == pytest.approx(0.0)


@requires_dciodvfy
def test_dciodvfy_finds_no_error_in_either_rt_dose(phantom_dicom, phantom_small, tmp_path: Path) -> None:
    read = read_quietly(phantom_dicom[0])
    write_rt_dose(read, np.where(read.possible_dose_mask, 30.0, 0.0).astype(np.float32), tmp_path / "clinic.dcm")
    write_rt_dose(phantom_small, phantom_small.dose, tmp_path / "openkbp.dcm")
    for path in (tmp_path / "clinic.dcm", tmp_path / "openkbp.dcm"):
        result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        report = result.stdout + result.stderr
        assert "RTDose" in report and "Error" not in report, report


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / folder.name))


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / "RS.dcm").unlink(), "no RTSTRUCT"),
    (lambda f: shutil.copy(f / "RS.dcm", f / "RS2.dcm"), "2 RTSTRUCT files"),
    (lambda f: (f / "CT_0010.dcm").unlink(), "not evenly spaced"),
    (lambda f: [p.unlink() for p in f.glob("CT_*.dcm")], "no CT series"),
])
def test_a_broken_patient_folder_is_refused_with_its_fault(phantom_dicom, tmp_path: Path, damage, message: str) -> None:
    folder = _copy(phantom_dicom[0], tmp_path)
    damage(folder)
    with pytest.raises(PatientDataError, match=message):
        read_quietly(folder)


def _edit(folder: Path, pattern: str, change) -> None:  # noqa: ANN001
    for path in sorted(folder.glob(pattern)):
        ds = pydicom.dcmread(path)
        change(ds)
        ds.save_as(path)


@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")  # the NaN, written on purpose
@pytest.mark.parametrize("pattern, change, message", [
    ("RS.dcm", lambda ds: setattr(ds.ROIContourSequence[0], "ReferencedROINumber", None), "ROI without a valid number"),
    ("CT_0010.dcm", lambda ds: setattr(ds, "ImagePositionPatient", [*ds.ImagePositionPatient[:2], "NaN"]), "not finite"),
    ("CT_*.dcm", lambda ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0.5, 1, 0]), "at right angles"),
])
def test_a_damaged_header_is_refused_with_its_fault(phantom_dicom, tmp_path: Path, pattern: str, change,
                                                   message: str) -> None:
    folder = _copy(phantom_dicom[0], tmp_path)
    _edit(folder, pattern, change)
    with pytest.raises(PatientDataError, match=message):
        read_quietly(folder)


def test_the_rt_dose_spells_the_patients_name_as_the_ct_does(phantom_dicom, tmp_path: Path) -> None:
    folder = _copy(phantom_dicom[0], tmp_path)

    def name_in_utf8(ds) -> None:  # noqa: ANN001
        ds.SpecificCharacterSet, ds.PatientName = "ISO_IR 192", "王^小明"

    _edit(folder, "*.dcm", name_in_utf8)
    read = read_quietly(folder)
    write_rt_dose(read, np.where(read.possible_dose_mask, 30.0, 0.0).astype(np.float32), tmp_path / "rd.dcm")
    assert str(pydicom.dcmread(tmp_path / "rd.dcm").PatientName) == "王^小明"


def test_a_patient_without_a_usable_target_is_a_clear_error(phantom_dicom, tmp_path: Path) -> None:
    folder = _copy(phantom_dicom[0], tmp_path)
    rs = pydicom.dcmread(folder / "RS.dcm")
    for roi in rs.StructureSetROISequence:
        roi.ROIName = roi.ROIName.replace("PTV_", "Target_")
    rs.save_as(folder / "RS.dcm")
    with pytest.raises(PatientDataError, match="no usable target.*--ptv"):
        read_quietly(folder)
    read = read_quietly(folder, RoiNames.load(prescriptions={"Target_7000": 70}))  # given by the --ptv flag
    assert set(read.structures) >= {"PTV70"}


def test_an_rtstruct_of_another_frame_of_reference_is_refused(phantom_dicom, tmp_path: Path) -> None:
    folder = _copy(phantom_dicom[0], tmp_path)
    rs = pydicom.dcmread(folder / "RS.dcm")
    rs.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID = pydicom.uid.generate_uid()
    rs.save_as(folder / "RS.dcm")
    with pytest.raises(PatientDataError, match="another frame of reference"):
        read_quietly(folder)


def test_dicom_folders_are_found_among_patients(phantom_dicom, tmp_path: Path) -> None:
    batch = tmp_path / "batch"
    shutil.copytree(phantom_dicom[0], batch / "clinic_1")
    shutil.copytree(phantom_dicom[0], batch / "clinic_2")
    assert [p.name for p in sources.find_patients(batch)] == ["clinic_1", "clinic_2"]
    assert sources.find_patients(batch / "clinic_2") == [batch / "clinic_2"]
