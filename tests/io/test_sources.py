from __future__ import annotations

import shutil
import tarfile
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from dosepred.io import nifti, openkbp_csv, sources
from dosepred.io.errors import PatientDataError
from dosepred.io.roi_names import UnmappedRoiWarning


def test_every_sub_folder_of_a_split_is_a_patient_entry(phantom_split: Path, tmp_path: Path) -> None:
    split = shutil.copytree(phantom_split, tmp_path / "split")
    (split / "pt_3").mkdir()  # empty
    shutil.copytree(split / "pt_1", split / "pt_4")
    (split / "pt_4" / "ct.csv").rename(split / "pt_4" / "CT.csv")  # misnamed
    (split / "README.md").write_text("notes")
    (split / ".cache").mkdir()
    found = sources.find_patients(split)
    assert [path.name for path in found] == ["pt_1", "pt_2", "pt_3", "pt_4"]
    with pytest.raises(PatientDataError, match="empty folder"):
        sources.read_patient(split / "pt_3")
    with pytest.raises(PatientDataError, match="missing ct.csv"), pytest.warns(UnmappedRoiWarning, match="CT.csv"):
        sources.read_patient(split / "pt_4")


def test_a_split_one_level_down_is_still_found(phantom_split: Path, tmp_path: Path) -> None:
    shutil.copytree(phantom_split, tmp_path / "extracted" / "train-pats")
    assert [path.name for path in sources.find_patients(tmp_path / "extracted")] == ["pt_1", "pt_2"]


@pytest.mark.parametrize("archive", ["pt_9.zip", "pt_9.tar.gz"])
def test_an_archive_of_one_patients_files_names_the_patient_after_the_archive(phantom_split: Path, tmp_path: Path,
                                                                              archive: str) -> None:
    # Two such archives must not share an id: outputs are named by it, and --continue skips by it.
    files = sorted((phantom_split / "pt_1").iterdir())
    if archive.endswith(".zip"):
        with zipfile.ZipFile(tmp_path / archive, "w") as zipped:
            for file in files:
                zipped.write(file, file.name)
    else:
        with tarfile.open(tmp_path / archive, "w:gz") as tarred:
            for file in files:
                tarred.add(file, file.name)
    with sources.open_patients(tmp_path / archive) as paths:
        assert [path.name for path in paths] == ["pt_9"]
        assert sources.read_patient(paths[0]).id == "pt_9"
    hidden = tmp_path / ("." + archive)  # a hidden name would hide the patient from find_patients
    hidden.write_bytes((tmp_path / archive).read_bytes())
    with pytest.raises(PatientDataError, match="name it like"), sources.open_patients(hidden):
        pass


def test_a_folder_of_no_patient_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(PatientDataError, match="holds no patient"):
        sources.find_patients(tmp_path)


@pytest.fixture(scope="module")
def reference(phantom_split: Path):
    return openkbp_csv.read_patient(phantom_split / "pt_1")


def test_a_nifti_dose_on_the_reference_grid_is_read(reference, tmp_path: Path) -> None:
    nifti.write_volume(reference.dose, reference.spacing, tmp_path / "pt_1.nii.gz")
    dose = sources.read_dose_file(tmp_path / "pt_1.nii.gz", reference.shape, reference.spacing)
    np.testing.assert_allclose(dose, reference.dose, atol=1e-5)


@pytest.mark.parametrize("change", ["spacing", "oblique"])
def test_a_nifti_dose_on_another_spacing_or_orientation_is_refused(reference, tmp_path: Path, change: str) -> None:
    path = tmp_path / "pt_1.nii.gz"
    if change == "spacing":
        nifti.write_volume(reference.dose, (2.0, 2.0, 2.0), path)
    else:  # the same voxels, turned by 20 degrees about the patient's long axis
        turn = np.eye(4)
        turn[:2, :2] = [[np.cos(0.35), -np.sin(0.35)], [np.sin(0.35), np.cos(0.35)]]
        nib.save(nib.Nifti1Image(reference.dose, turn @ nifti.affine_from_spacing(reference.spacing)), path)
    with pytest.raises(PatientDataError, match="differs from the reference patient's") as caught:
        sources.read_dose_file(path, reference.shape, reference.spacing)
    assert caught.value.where == str(path)


def test_a_mirrored_file_is_read_in_the_patient_axes(reference, tmp_path: Path) -> None:
    affine = nifti.affine_from_spacing(reference.spacing)
    affine[:, 1] *= -1  # stored right to left: the same dose, once the axes are put back
    nib.save(nib.Nifti1Image(reference.dose[:, ::-1].copy(), affine), tmp_path / "pt_1.nii.gz")
    dose = sources.read_dose_file(tmp_path / "pt_1.nii.gz", reference.shape, reference.spacing)
    np.testing.assert_allclose(dose, reference.dose, atol=1e-5)
