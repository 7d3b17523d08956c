from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from data_prep import nifti
from data_prep.errors import PatientDataError
from data_prep.patient import require_grid
from tests.conftest import requires_openkbp
from tests.data_prep.test_openkbp_csv import assert_same_patient


def test_affine_axes_are_posterior_left_inferior() -> None:
    affine = nifti.affine_from_spacing((4.688, 4.5, 3.0))
    assert nib.aff2axcodes(affine) == ("P", "L", "I")
    assert tuple(nib.affines.voxel_sizes(affine)) == (4.688, 4.5, 3.0)


def test_nifti_round_trip_phantom(phantom_small, tmp_path: Path) -> None:
    nifti.write_patient(phantom_small, tmp_path / "phantom")
    assert_same_patient(phantom_small, nifti.read_patient(tmp_path / "phantom"))


@requires_openkbp
def test_nifti_round_trip_real(sample_patients, tmp_path: Path) -> None:
    for patient in sample_patients:
        nifti.write_patient(patient, tmp_path / patient.id)
        assert_same_patient(patient, nifti.read_patient(tmp_path / patient.id))


def test_other_orientations_and_formats_read_back_the_same(phantom_small, tmp_path: Path) -> None:
    nifti.write_patient(phantom_small, tmp_path / "p")
    ras = nib.as_closest_canonical(nib.load(tmp_path / "p" / "ct.nii.gz"))
    assert nib.aff2axcodes(ras.affine) == ("R", "A", "S")
    nib.save(ras, tmp_path / "ct_ras.nii.gz")
    sitk.WriteImage(sitk.DICOMOrient(sitk.ReadImage(str(tmp_path / "ct_ras.nii.gz")), "LPS"), str(tmp_path / "ct.nrrd"))
    for path in (tmp_path / "ct_ras.nii.gz", tmp_path / "ct.nrrd"):
        volume, spacing = nifti.read_volume(path)
        np.testing.assert_array_equal(volume, phantom_small.ct)
        assert spacing == pytest.approx(phantom_small.spacing)


def test_grid_mismatch_is_explained(phantom_small) -> None:
    with pytest.raises(PatientDataError, match="differs from the 128x128x128 grid"):
        require_grid(phantom_small)


def test_corrupt_image(tmp_path: Path) -> None:
    (tmp_path / "ct.nii.gz").write_bytes(b"not really gzip")
    with pytest.raises(PatientDataError, match="cannot read image"):
        nifti.read_volume(tmp_path / "ct.nii.gz")


def test_mismatched_shapes_in_a_folder(phantom_small, tmp_path: Path) -> None:
    nifti.write_patient(phantom_small, tmp_path / "p")
    nifti.write_volume(np.zeros((8, 8, 8), dtype=bool), phantom_small.spacing, tmp_path / "p" / "Larynx.nii.gz")
    with pytest.raises(PatientDataError, match="Larynx has shape"):
        nifti.read_patient(tmp_path / "p")


def test_missing_possible_dose_mask(phantom_small, tmp_path: Path) -> None:
    nifti.write_patient(phantom_small, tmp_path / "p")
    (tmp_path / "p" / "possible_dose_mask.nii.gz").unlink()
    with pytest.raises(PatientDataError, match="missing possible_dose_mask"):
        nifti.read_patient(tmp_path / "p")


def test_non_binary_mask(phantom_small, tmp_path: Path) -> None:
    nifti.write_patient(phantom_small, tmp_path / "p")
    nifti.write_volume(np.full(phantom_small.shape, 3.0, dtype=np.float32), phantom_small.spacing,
                       tmp_path / "p" / "PTV70.nii.gz")
    with pytest.raises(PatientDataError, match="only 0 and 1"):
        nifti.read_patient(tmp_path / "p")


def test_user_image_of_another_grid_is_read_in_canonical_axes(tmp_path: Path) -> None:
    image = sitk.Image(64, 48, 40, sitk.sitkInt16)
    image.SetSpacing((1.0, 1.0, 2.5))
    sitk.WriteImage(image, str(tmp_path / "ct.mha"))
    volume, spacing = nifti.read_volume(tmp_path / "ct.mha")
    assert volume.shape == (48, 64, 40)  # (x=L, y=P, z=S) reordered to axes P, L, I
    assert spacing == (1.0, 1.0, 2.5)
