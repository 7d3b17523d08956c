from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from dosepred.io.errors import PatientDataError
from dosepred.io.openkbp_csv import (
    read_dense,
    read_patient,
    read_sparse,
    write_patient,
    write_submission,
)
from dosepred.io.patient import ROIS
from dosepred.io.roi_names import UnmappedRoiWarning
from tests.conftest import SAMPLE_PATIENTS, requires_openkbp


def assert_same_patient(a, b) -> None:
    assert a.id == b.id
    assert a.spacing == b.spacing
    np.testing.assert_array_equal(a.ct, b.ct)
    np.testing.assert_array_equal(a.possible_dose_mask, b.possible_dose_mask)
    assert sorted(a.structures) == sorted(b.structures)
    for roi in a.structures:
        np.testing.assert_array_equal(a.structures[roi], b.structures[roi])
    if a.dose is None:
        assert b.dose is None
    else:
        np.testing.assert_array_equal(a.dose, b.dose)


@requires_openkbp
def test_reads_real_patients_in_physical_units(sample_patients) -> None:
    pt_66, pt_196, pt_201 = sample_patients
    assert pt_66.shape == (128, 128, 128)
    assert pt_66.ct.min() == -1000  # air, stored as 0 and left out of the file
    soft_tissue = np.median(pt_66.ct[pt_66.possible_dose_mask])
    assert -150 < soft_tissue < 150
    assert set(pt_66.structures) == set(ROIS)
    assert len(pt_196.structures) == 9  # one ROI not contoured
    assert 60 < pt_201.dose.max() < 90
    # LeftParotid lies at higher axis-1 indices than RightParotid (patient right -> left).
    left = np.argwhere(pt_66.structures["LeftParotid"])[:, 1].mean()
    right = np.argwhere(pt_66.structures["RightParotid"])[:, 1].mean()
    assert left > right


@requires_openkbp
@pytest.mark.parametrize("source", SAMPLE_PATIENTS, ids=lambda p: p.name)
def test_csv_round_trip_real(source: Path, tmp_path: Path) -> None:
    patient = read_patient(source)
    write_patient(patient, tmp_path / patient.id)
    assert_same_patient(patient, read_patient(tmp_path / patient.id))


def test_csv_round_trip_phantom(tmp_path: Path) -> None:
    from dosepred.io.phantom import make_phantom

    phantom = make_phantom()
    write_patient(phantom, tmp_path / "phantom")
    assert_same_patient(phantom, read_patient(tmp_path / "phantom"))


def test_csv_refuses_other_grids(phantom_small, tmp_path: Path) -> None:
    with pytest.raises(PatientDataError, match="128x128x128"):
        write_patient(phantom_small, tmp_path / "small")
    assert not (tmp_path / "small").exists()


def test_submission_is_sparse_nonzero_dose(tmp_path: Path) -> None:
    dose = np.zeros((128, 128, 128), dtype=np.float32)
    dose[1, 2, 3] = 12.345
    dose[-1, -1, -1] = 70.0
    write_submission(dose, tmp_path / "pt_1.csv")
    lines = (tmp_path / "pt_1.csv").read_text().splitlines()
    assert lines == [",data", f"{1 * 128 * 128 + 2 * 128 + 3},12.345", f"{128**3 - 1},70"]
    np.testing.assert_array_equal(read_dense(tmp_path / "pt_1.csv"), dose)


# --- malformed input: every case names the file and the problem --------------------------------

@pytest.fixture
def patient_dir(phantom_small, tmp_path: Path) -> Path:
    """A valid OpenKBP folder to break, on the 128^3 grid the readers expect."""
    from dosepred.io.phantom import make_phantom

    folder = tmp_path / "pt_9"
    patient = make_phantom()
    patient.id = "pt_9"
    write_patient(patient, folder)
    return folder


def expect_error(folder: Path, file_name: str, fragment: str) -> None:
    with pytest.raises(PatientDataError) as caught:
        read_patient(folder)
    assert file_name in caught.value.where
    assert fragment in caught.value.problem


def test_truncated_csv(patient_dir: Path) -> None:
    dose = patient_dir / "dose.csv"
    dose.write_bytes(dose.read_bytes()[:-4])
    expect_error(patient_dir, "dose.csv", "cut off")


def test_garbled_csv_names_the_line(patient_dir: Path) -> None:
    ct = patient_dir / "ct.csv"
    lines = ct.read_text().splitlines(keepends=True)
    lines[5] = "12x,oops\n"
    ct.write_text("".join(lines))
    expect_error(patient_dir, "ct.csv", "line 6")


def test_wrong_header(patient_dir: Path) -> None:
    ct = patient_dir / "ct.csv"
    ct.write_text("index,value\n" + ct.read_text().split("\n", 1)[1])
    expect_error(patient_dir, "ct.csv", "wrong header")


def test_index_out_of_range(patient_dir: Path) -> None:
    (patient_dir / "Brainstem.csv").write_text(",data\n5,\n2097152,\n")
    expect_error(patient_dir, "Brainstem.csv", "out of range")


def test_repeated_index(patient_dir: Path) -> None:
    (patient_dir / "Brainstem.csv").write_text(",data\n5,\n9,\n5,\n")
    expect_error(patient_dir, "Brainstem.csv", "more than once")


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
def test_non_finite_values(patient_dir: Path, bad: str) -> None:
    (patient_dir / "dose.csv").write_text(f",data\n10,1.5\n11,{bad}\n")
    expect_error(patient_dir, "dose.csv", "NaN or infinity")


def test_negative_dose(patient_dir: Path) -> None:
    (patient_dir / "dose.csv").write_text(",data\n10,1.5\n11,-0.25\n")
    expect_error(patient_dir, "dose.csv", "negative")


@pytest.mark.parametrize("name", ["ct.csv", "possible_dose_mask.csv"])
def test_missing_required_file(patient_dir: Path, name: str) -> None:
    (patient_dir / name).unlink()
    expect_error(patient_dir, "pt_9", f"missing {name}")


@pytest.mark.parametrize("content", ["4.688\n4.688\n", "4.688\n-1\n3\n", "a\nb\nc\n", "4.688\n0\n3\n"])
def test_bad_voxel_dimensions(patient_dir: Path, content: str) -> None:
    (patient_dir / "voxel_dimensions.csv").write_text(content)
    expect_error(patient_dir, "voxel_dimensions.csv", "")


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "pt_1").mkdir()
    expect_error(tmp_path / "pt_1", "pt_1", "empty folder")


def test_garbled_mask_index(patient_dir: Path) -> None:
    (patient_dir / "possible_dose_mask.csv").write_text(",data\n1,\n2,\nthree,\n")
    expect_error(patient_dir, "possible_dose_mask.csv", "line 4")


def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    import dosepred.io.openkbp_csv as module
    from dosepred.io.phantom import make_phantom

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(module.np, "flatnonzero", broken)
    with pytest.raises(OSError):
        write_patient(make_phantom(), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_copied_sample_folder_reads_the_same(tmp_path: Path) -> None:
    if not SAMPLE_PATIENTS[0].is_dir():
        pytest.skip("OpenKBP sample data not found")
    copy = shutil.copytree(SAMPLE_PATIENTS[0], tmp_path / "pt_66")
    assert read_patient(copy).id == "pt_66"


# --- messages say what was expected, never what the file holds -----------------------------------

SECRET = "SECRET-do-not-show"


@pytest.mark.parametrize(("name", "content", "fragment"), [
    ("ct.csv", f"{SECRET}\n", "wrong header"),
    ("ct.csv", f",data\n5,1\n{SECRET},2\n", "line 3"),
    ("Brainstem.csv", f",data\n5,\n6,{SECRET}\n", "line 3"),
    ("voxel_dimensions.csv", f"{SECRET}\n1\n2\n", "3 positive voxel sizes"),
])
def test_errors_do_not_quote_the_file(patient_dir: Path, name: str, content: str, fragment: str) -> None:
    (patient_dir / name).write_text(content)
    with pytest.raises(PatientDataError) as caught:
        read_patient(patient_dir)
    assert fragment in caught.value.problem and name in caught.value.where
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize("value", ["0.5", "0", "2", "-1", "1.0", "yes", " 1"])
def test_non_binary_mask_values_are_refused(patient_dir: Path, value: str) -> None:
    (patient_dir / "PTV70.csv").write_text(f",data\n5,\n6,1\n7,{value}\n")
    expect_error(patient_dir, "PTV70.csv", "line 4: a mask value must be empty or 1")


def test_mask_values_empty_or_1_are_read(patient_dir: Path) -> None:
    (patient_dir / "PTV70.csv").write_text(",data\n5,\n6,1\n")
    assert read_patient(patient_dir).structures["PTV70"].reshape(-1).nonzero()[0].tolist() == [5, 6]


def test_a_file_larger_than_a_grid_of_rows_is_refused_unparsed(tmp_path: Path) -> None:
    path = tmp_path / "dose.csv"
    path.write_text(",data\n" + "".join(f"{i},1.5\n" for i in range(200)))
    with pytest.raises(PatientDataError, match="too large for a grid of 8 voxels"):
        read_sparse(path, values=True, n_voxels=8)


@pytest.mark.parametrize("renamed", ["ptv_70.csv", "CT.csv", "PTV70.CSV", "dose (1).csv"])
def test_unknown_csv_files_are_left_out_with_a_warning(patient_dir: Path, renamed: str) -> None:
    (patient_dir / "PTV70.csv").rename(patient_dir / renamed)
    with pytest.warns(UnmappedRoiWarning, match=re.escape(f"1 ROI(s) left out, not known to the model: {renamed}")) as caught:
        patient = read_patient(patient_dir)
    assert "PTV70.csv" in str(caught[0].message)  # the message lists the known names
    assert "PTV70" not in patient.structures


def test_other_files_and_hidden_ones_are_ignored(patient_dir: Path) -> None:
    (patient_dir / "README.txt").write_text("notes")
    (patient_dir / "._ct.csv").write_bytes(b"\x00\x05\x16\x07")  # macOS metadata beside the real file
    assert read_patient(patient_dir).id == "pt_9"
