"""The DICOM route: a CT series + RTSTRUCT in, the working grid, the dose back on the CT, RT Dose out."""

from __future__ import annotations

import copy
import shutil
import subprocess
import tracemalloc
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
    (lambda f: (f / "CT_0010.dcm").unlink(), r"not evenly spaced.*CT_0009.dcm and CT_0011.dcm lie 24.00 mm apart, most slices 12.00"),
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
    ("CT_*.dcm", lambda ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 1]), "orientation \\(6\\)"),
    # A 1.1 degree gantry tilt: each 12 mm slice 0.24 mm further along x; RT Dose frames step along the normal.
    ("CT_*.dcm", lambda ds: setattr(ds, "ImagePositionPatient", [ds.ImagePositionPatient[0] + 0.02 * ds.ImagePositionPatient[2],
                                                                *ds.ImagePositionPatient[1:]]), "tilted gantry"),
    ("CT_0010.dcm", lambda ds: setattr(ds, "ImagePositionPatient", [ds.ImagePositionPatient[0] + 0.3,
                                                                    *ds.ImagePositionPatient[1:]]), "0.30 mm from its place"),
    ("CT_0010.dcm", lambda ds: setattr(ds, "PixelSpacing", [4.5, 4.5]), "pixel spacing"),
    ("CT_*.dcm", lambda ds: setattr(ds, "PixelSpacing", [0, 0]), "not two positive numbers"),
    ("CT_*.dcm", lambda ds: setattr(ds, "BitsAllocated", 8), "16-bit greyscale"),
    ("CT_*.dcm", lambda ds: setattr(ds, "RescaleSlope", 0), "rescale slope"),
    ("CT_*.dcm", lambda ds: delattr(ds, "FrameOfReferenceUID"), "FrameOfReferenceUID"),
    ("CT_*.dcm", lambda ds: setattr(ds, "StudyInstanceUID", ""), "StudyInstanceUID"),
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


def test_slice_positions_rounded_to_a_tenth_of_a_millimetre_are_read(phantom_dicom, tmp_path: Path) -> None:
    folder = _copy(phantom_dicom[0], tmp_path)
    _edit(folder, "CT_00[0-9][13579].dcm", lambda ds: setattr(ds, "ImagePositionPatient",
                                                              [*ds.ImagePositionPatient[:2], ds.ImagePositionPatient[2] + 0.05]))
    assert read_quietly(folder).clinic.ct_grid.spacing[2] == pytest.approx(12.0, abs=0.01)


def test_a_scout_in_the_series_is_left_out(phantom_dicom, tmp_path: Path) -> None:
    folder = _copy(phantom_dicom[0], tmp_path)
    scout = pydicom.dcmread(folder / "CT_0010.dcm")
    scout.ImageType, scout.ImagePositionPatient = ["ORIGINAL", "PRIMARY", "LOCALIZER"], [0, 0, 1000]
    scout.SOPInstanceUID = pydicom.uid.generate_uid()
    scout.save_as(folder / "CT_scout.dcm")
    np.testing.assert_array_equal(read_quietly(folder).ct, read_quietly(phantom_dicom[0]).ct)


def _with_contours(folder: Path, change) -> None:  # noqa: ANN001
    """Change the RTSTRUCT's PTV_7000: ``change(rs, roi, contours)`` with its StructureSetROISequence item and its
    ROIContourSequence item."""
    rs = pydicom.dcmread(folder / "RS.dcm")
    roi = next(r for r in rs.StructureSetROISequence if r.ROIName == "PTV_7000")
    contours = next(c for c in rs.ROIContourSequence if c.ReferencedROINumber == roi.ROINumber)
    change(rs, roi, contours)
    rs.save_as(folder / "RS.dcm")


def test_contours_on_finer_slices_than_the_ct_are_joined(phantom_dicom, tmp_path: Path) -> None:
    """An RTSTRUCT drawn every 3 mm on a 12 mm CT: two contour planes share each slice, and neither cuts the other."""
    folder = _copy(phantom_dicom[0], tmp_path)

    def add_planes(rs, roi, item) -> None:  # noqa: ANN001
        for contour in list(item.ContourSequence):
            finer = copy.deepcopy(contour)
            finer.ContourData = [v + 3.0 * (i % 3 == 2) for i, v in enumerate(contour.ContourData)]  # z + 3 mm
            item.ContourSequence.append(finer)

    _with_contours(folder, add_planes)
    expected = read_quietly(phantom_dicom[0]).structures["PTV70"]
    assert expected.any()
    np.testing.assert_array_equal(read_quietly(folder).structures["PTV70"], expected)


def test_two_rois_of_one_name_are_joined(phantom_dicom, tmp_path: Path) -> None:
    folder = _copy(phantom_dicom[0], tmp_path)

    def duplicate(rs, roi, item) -> None:  # noqa: ANN001
        twin, twin_item = copy.deepcopy(roi), copy.deepcopy(item)
        twin.ROINumber = twin_item.ReferencedROINumber = 99
        rs.StructureSetROISequence.append(twin)
        rs.ROIContourSequence.append(twin_item)

    _with_contours(folder, duplicate)
    np.testing.assert_array_equal(read_quietly(folder).structures["PTV70"], read_quietly(phantom_dicom[0]).structures["PTV70"])


@pytest.mark.filterwarnings("ignore:The value length")  # the longest names pass LO's 64 characters, on purpose
def test_memory_does_not_grow_with_the_rois_of_one_structure(phantom_dicom, tmp_path: Path) -> None:
    """Sixty ROIs that map to PTV70 (a few kB of RTSTRUCT) once held a CT-sized mask each."""
    folder = _copy(phantom_dicom[0], tmp_path)

    def add_rois(rs, roi, item) -> None:  # noqa: ANN001
        for number in range(100, 160):
            twin, twin_item = copy.deepcopy(roi), copy.deepcopy(item)
            twin.ROINumber = twin_item.ReferencedROINumber = number
            twin.ROIName = "PTV70" + "." + "0" * (number - 99)  # each a distinct name for 70 Gy
            rs.StructureSetROISequence.append(twin)
            rs.ROIContourSequence.append(twin_item)

    _with_contours(folder, add_rois)

    def peak(path: Path) -> int:
        tracemalloc.start()
        read_quietly(path)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak

    one_mask = 150 * 150 * 32  # bytes: the CT grid (600 mm at 4 mm, 32 slices)
    read_quietly(folder)  # the readers' first-use allocations out of the way
    # The larger RTSTRUCT's parsed contours take ~14 masks' worth; a mask per ROI would add 60 more.
    assert peak(folder) - peak(phantom_dicom[0]) < 30 * one_mask


def test_an_roi_on_another_frame_of_reference_is_left_out_with_a_warning(phantom_dicom, tmp_path: Path) -> None:
    folder = _copy(phantom_dicom[0], tmp_path)
    _with_contours(folder, lambda rs, roi, item: setattr(roi, "ReferencedFrameOfReferenceUID", pydicom.uid.generate_uid()))
    with pytest.warns(UnmappedRoiWarning, match="another frame of reference.*PTV_7000"):
        read = read_dicom_patient(folder)
    assert "PTV70" not in read.structures and "PTV63" in read.structures


def test_an_rt_dose_refuses_negative_or_nan_doses(phantom_small, tmp_path: Path) -> None:
    for value in (-1.0, np.nan):
        dose = phantom_small.dose.copy()
        dose[0, 0, 0] = value
        with pytest.raises(ValueError, match="at least 0 Gy"):
            write_rt_dose(phantom_small, dose, tmp_path / "rd.dcm")
    assert not (tmp_path / "rd.dcm").exists()


def test_dicom_folders_are_found_among_patients(phantom_dicom, tmp_path: Path) -> None:
    batch = tmp_path / "batch"
    shutil.copytree(phantom_dicom[0], batch / "clinic_1")
    shutil.copytree(phantom_dicom[0], batch / "clinic_2")
    assert [p.name for p in sources.find_patients(batch)] == ["clinic_1", "clinic_2"]
    assert sources.find_patients(batch / "clinic_2") == [batch / "clinic_2"]
