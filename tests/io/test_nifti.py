from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from dosepred.io import nifti
from dosepred.io.errors import PatientDataError
from dosepred.io.patient import require_grid
from tests.conftest import requires_openkbp
from tests.io.test_openkbp_csv import assert_same_patient


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
        volume, affine = nifti.read_volume(path)
        np.testing.assert_array_equal(volume, phantom_small.ct)
        np.testing.assert_allclose(affine, nifti.affine_from_spacing(phantom_small.spacing), atol=1e-4)  # float32


def test_grid_mismatch_is_explained(phantom_small) -> None:
    with pytest.raises(PatientDataError, match="differs from the 128x128x128 grid"):
        require_grid(phantom_small)


def test_corrupt_image(tmp_path: Path) -> None:
    (tmp_path / "ct.nii.gz").write_bytes(b"not really gzip")
    with pytest.raises(PatientDataError, match="cannot read image"):
        nifti.read_volume(tmp_path / "ct.nii.gz")


def test_mismatched_shapes_in_a_folder(phantom_small, tmp_path: Path) -> None:
    nifti.write_patient(phantom_small, tmp_path / "p")
    larynx = tmp_path / "p" / "Larynx.nii"
    (tmp_path / "p" / "Larynx.nii.gz").unlink(missing_ok=True)  # it would be found first
    nifti.write_volume(np.zeros((8, 8, 8), dtype=bool), phantom_small.spacing, larynx)
    larynx.write_bytes(larynx.read_bytes()[:352])  # its header alone: reading a voxel would fail otherwise
    with pytest.raises(PatientDataError, match=f"Larynx.nii: holds 512 voxels where {phantom_small.ct.size} were"):
        nifti.read_patient(tmp_path / "p")
    larynx.unlink()
    x, y, z = phantom_small.shape
    nifti.write_volume(np.zeros((x // 2, y * 2, z), dtype=bool), phantom_small.spacing, tmp_path / "p" / "Larynx.nii.gz")
    with pytest.raises(PatientDataError, match="Larynx has shape"):  # as many voxels, another shape
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
    volume, affine = nifti.read_volume(tmp_path / "ct.mha")
    assert volume.shape == (48, 64, 40)  # (x=L, y=P, z=S) reordered to axes P, L, I
    assert nifti.spacing_of(affine) == (1.0, 1.0, 2.5)


# --- every volume of a patient on the CT's grid ------------------------------------------------

def resave_with_affine(path: Path, change) -> None:  # noqa: ANN001 - change maps an affine to another
    image = nib.load(path)
    nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj), change(image.affine.copy())), path)


def shifted(affine: np.ndarray) -> np.ndarray:
    affine[:3, 3] += (10.0, 0.0, 0.0)
    return affine


def flipped(affine: np.ndarray) -> np.ndarray:
    affine[:, 1] *= -1  # axis 1 now runs to the patient's right: the mask's left and right swap
    return affine


def rescaled(affine: np.ndarray) -> np.ndarray:
    affine[:3, 2] *= 1.5
    return affine


@pytest.mark.parametrize(("change", "problem"), [(shifted, "position"), (flipped, "orientation"),
                                                 (rescaled, "voxel spacing")])
@pytest.mark.parametrize("stem", ["PTV70", "dose"])
def test_a_volume_off_the_ct_grid_is_refused(phantom_small, tmp_path: Path, change, problem: str, stem: str) -> None:
    nifti.write_patient(phantom_small, tmp_path / "p")
    resave_with_affine(tmp_path / "p" / f"{stem}.nii.gz", change)
    with pytest.raises(PatientDataError, match=problem) as caught:
        nifti.read_patient(tmp_path / "p")
    assert caught.value.where.endswith(f"{stem}.nii.gz")


def test_the_same_grid_in_another_orientation_is_accepted(phantom_small, tmp_path: Path) -> None:
    nifti.write_patient(phantom_small, tmp_path / "phantom")
    mask = tmp_path / "phantom" / "PTV70.nii.gz"
    nib.save(nib.as_closest_canonical(nib.load(mask)), mask)  # RAS on disk, the same voxels in space
    assert_same_patient(phantom_small, nifti.read_patient(tmp_path / "phantom"))


# --- sizes are checked before voxels are read ---------------------------------------------------

def test_a_huge_grid_in_a_header_is_refused_before_reading(tmp_path: Path) -> None:
    header = nib.Nifti1Header()
    header.set_data_shape((4096, 4096, 4096))
    header.set_data_dtype(np.float32)
    path = tmp_path / "ct.nii"
    path.write_bytes(header.binaryblock + bytes(4))  # the header promises 256 GiB of voxels
    with pytest.raises(PatientDataError, match="4096x4096x4096 is outside what can be read"):
        nifti.read_volume(path)


def test_a_huge_grid_is_refused_by_the_simpleitk_reader_too(tmp_path: Path, monkeypatch) -> None:
    image = sitk.Image(8, 8, 8, sitk.sitkUInt8)
    sitk.WriteImage(image, str(tmp_path / "ct.mhd"))
    header = (tmp_path / "ct.mhd").read_text().replace("DimSize = 8 8 8", "DimSize = 4096 4096 4096")
    (tmp_path / "ct.mhd").write_text(header)
    monkeypatch.setattr(sitk.ImageFileReader, "Execute", lambda self: pytest.fail("voxels read before the size check"))
    with pytest.raises(PatientDataError, match="outside what can be read"):
        nifti.read_volume(tmp_path / "ct.mhd")


@pytest.mark.parametrize("suffix", [".mhd", ".nhdr"])
def test_a_detached_header_reads_only_a_plain_file_beside_it(tmp_path: Path, suffix: str) -> None:
    """A header names the file holding its voxels: anything but one regular file beside it (an absolute path,
    another folder, a device, a link, a pattern of files) would read outside the patient's folder."""
    patient = tmp_path / "patient"
    patient.mkdir()
    sitk.WriteImage(sitk.Image(8, 8, 8, sitk.sitkUInt8) + 7, str(patient / f"ct{suffix}"))
    header = (patient / f"ct{suffix}").read_text()
    data_file = next(p.name for p in patient.iterdir() if p.suffix != suffix)
    assert nifti.read_volume(patient / f"ct{suffix}")[0].max() == 7  # as written: the voxels beside it
    secret = tmp_path / "secret.raw"
    secret.write_bytes(bytes(range(256)) * 2)
    (patient / "link.raw").symlink_to(secret)
    for named in (str(secret), "../secret.raw", "/dev/zero", "link.raw", "LIST", "ct_%03d.raw 1 8 1", "missing.raw"):
        (patient / f"ct{suffix}").write_text(header.replace(data_file, named))
        with pytest.raises(PatientDataError, match="in one file beside it"):
            nifti.read_volume(patient / f"ct{suffix}")
    (patient / f"ct{suffix}").write_text(header.replace(data_file, "\n" * 70000))  # no end of header in reach
    with pytest.raises(PatientDataError):
        nifti.read_volume(patient / f"ct{suffix}")


def test_complex_voxels_are_refused(tmp_path: Path) -> None:
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), dtype=np.complex64), nifti.affine_from_spacing((1, 1, 1))),
             tmp_path / "ct.nii.gz")
    with pytest.raises(PatientDataError, match="single real numbers"):
        nifti.read_volume(tmp_path / "ct.nii.gz")


def test_reader_errors_do_not_quote_the_file(tmp_path: Path) -> None:
    (tmp_path / "ct.nii.gz").write_bytes(b"SECRET-first-line\nmore")
    with pytest.raises(PatientDataError) as caught:
        nifti.read_volume(tmp_path / "ct.nii.gz")
    assert "SECRET" not in str(caught.value)


def test_each_volume_is_compacted_as_it_is_read(tmp_path: Path) -> None:
    """Masks stored as float64 are 8 times their bool: holding a folder of them at once took gigabytes."""
    import tracemalloc

    from dosepred.io.phantom import make_phantom

    patient = make_phantom()  # 128^3
    nifti.write_patient(patient, tmp_path / "pt")
    masks = [path for path in (tmp_path / "pt").iterdir() if nifti._stem(path.name) not in ("ct", "dose")]
    for path in masks:
        image = nib.load(path)
        nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj).astype(np.float64), image.affine), path)
    nifti.read_patient(tmp_path / "pt")  # first-use allocations out of the way
    tracemalloc.start()
    read = nifti.read_patient(tmp_path / "pt")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    float64_volume = 8 * patient.ct.size
    # Reading one float64 volume takes about two of them at once; all eleven masks held as read took 14.
    assert len(masks) == 11 and peak < 8 * float64_volume
    assert read.possible_dose_mask.dtype == bool
