"""Patients as folders of images: NIfTI written with nibabel, read from NIfTI or any SimpleITK format.

World frame. OpenKBP keeps no DICOM frame, so the affine is built from the spacing alone. Voxel
axes 0, 1, 2 point to the patient's posterior, left and inferior (axis codes ``P L I``), so the
NIfTI (RAS+) affine is ``diag``-like with negative signs: x = -spacing1 * j, y = -spacing0 * i,
z = -spacing2 * k, and voxel (0, 0, 0) sits at the world origin. Any image read back is reoriented to
these axes first, whatever its own orientation, so what a viewer shows as left stays left.

Folder layout: ``ct``, ``possible_dose_mask``, ``dose`` (optional) and one file per contoured ROI,
named as in ``dosepred.io.patient.ROIS``, each ``.nii.gz`` (or, when reading, any extension SimpleITK
opens: ``.nii``, ``.mha``, ``.mhd``, ``.nrrd``, ...). CT in HU, dose in Gy, masks 0/1. Every file of a
folder must lie on the CT's grid: same spacing, orientation and position (affine).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from dosepred.io.clinic import Grid
from dosepred.io.errors import PatientDataError
from dosepred.io.files import atomic_folder
from dosepred.io.patient import ROIS, Patient, binary_mask, check_grid
from dosepred.io.roi_names import warn_unmapped

AXIS_CODES = ("P", "L", "I")
NIFTI_SUFFIX = ".nii.gz"
#: The images of a patient folder, each ``<stem><suffix>``; the CT first, as the others are checked against it.
IMAGE_STEMS = ("ct", "possible_dose_mask", "dose", *ROIS)
_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")
#: Two volumes lie on one grid when their affines agree this closely (mm); headers store float32, which
#: keeps positions of a few hundred mm to about 1e-5 mm.
FRAME_TOLERANCE_MM = 1e-3


def affine_from_spacing(spacing: tuple[float, float, float]) -> np.ndarray:
    """The RAS+ affine of an OpenKBP grid with this voxel spacing (mm), axes P, L, I."""
    affine = np.zeros((4, 4))
    affine[1, 0] = -spacing[0]
    affine[0, 1] = -spacing[1]
    affine[2, 2] = -spacing[2]
    affine[3, 3] = 1.0
    return affine


def write_volume(volume: np.ndarray, spacing: tuple[float, float, float], path: Path, *, description: str = "") -> None:
    """Write one volume as NIfTI in the OpenKBP frame (masks as uint8, integral CT as int16); ``description``
    goes into the header's descrip field (79 characters)."""
    import nibabel as nib  # here, not at the top: a job that reads only packs does without it

    if volume.dtype == bool:
        volume = volume.astype(np.uint8)
    elif np.array_equal(volume, np.round(volume)) and np.abs(volume).max(initial=0) < 2**15:
        volume = volume.astype(np.int16)
    image = nib.Nifti1Image(volume, affine_from_spacing(spacing))
    image.header.set_xyzt_units("mm")
    image.header["descrip"] = description.encode("utf-8")[:79]
    nib.save(image, path)


def write_on_grid(array_zyx: np.ndarray, grid: Grid, path: Path, *, description: str = "") -> None:
    """One float volume on any DICOM grid (a clinic CT's, [z, y, x]) as NIfTI, in that grid's place: the RAS+
    affine is the grid's LPS one with x and y negated; ``description`` as in ``write_volume``."""
    import nibabel as nib  # here, not at the top: a job that reads only packs does without it

    image = nib.Nifti1Image(np.transpose(np.asarray(array_zyx, dtype=np.float32), (2, 1, 0)),
                            np.diag([-1.0, -1.0, 1.0, 1.0]) @ grid.matrix)
    image.header.set_xyzt_units("mm")
    image.header["descrip"] = description.encode("utf-8")[:79]
    nib.save(image, path)


def read_volume(path: Path, *, voxels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read an image (NIfTI via nibabel, other formats via SimpleITK), reoriented to axes P, L, I.

    The header is checked first (3D, a grid within ``check_grid``, numeric voxels, and ``voxels`` of them
    where given), so no voxel is read from an image that cannot be a patient volume.

    Returns:
        The voxel array and its RAS+ affine (mm) on those axes.
    """
    try:
        if path.name.endswith((".nii", ".nii.gz")):
            return _read_nifti(path, voxels)
        return _read_with_simpleitk(path, voxels)
    except PatientDataError:
        raise
    except Exception as error:  # nibabel and SimpleITK raise many types; their messages may quote the file
        problem = f"cannot read image: corrupt, truncated or not an image ({type(error).__name__})"
        raise PatientDataError(path, problem) from None


def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    """The voxel spacing (mm) of an affine, along its voxel axes."""
    import nibabel as nib  # here, not at the top: a job that reads only packs does without it

    return _mm(nib.affines.voxel_sizes(affine))


def check_same_frame(path: Path, affine: np.ndarray, reference: np.ndarray, whose: str) -> None:
    """Raise unless ``affine`` puts the voxels where ``reference`` does: same spacing, orientation, position."""
    spacing, expected = spacing_of(affine), spacing_of(reference)
    if not np.allclose(spacing, expected, rtol=0, atol=FRAME_TOLERANCE_MM):
        raise PatientDataError(path, f"voxel spacing {spacing} mm differs from {whose} {expected} mm")
    if not np.allclose(affine, reference, rtol=0, atol=FRAME_TOLERANCE_MM):
        raise PatientDataError(path, f"orientation or position in space (affine) differs from {whose}: "
                               "the volumes would not line up")


def _check_voxel_count(size: tuple[int, ...], voxels: int | None, path: Path) -> None:
    if voxels is not None and int(np.prod(size)) != voxels:
        raise PatientDataError(path, f"holds {int(np.prod(size))} voxels where {voxels} were expected")


def _check_voxel_type(dtype: np.dtype, path: Path) -> None:
    if dtype.kind not in "biuf":
        raise PatientDataError(path, "voxels must be single real numbers (not colour, complex or other types)")


def _read_nifti(path: Path, voxels: int | None) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib  # here, not at the top: a job that reads only packs does without it

    image = nib.load(path)
    if len(image.shape) != 3:
        raise PatientDataError(path, f"expected a 3D image, got a {len(image.shape)}D one")
    check_grid(image.shape, path)
    _check_voxel_count(image.shape, voxels, path)
    _check_voxel_type(image.get_data_dtype(), path)
    to_canonical = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(image.affine), nib.orientations.axcodes2ornt(AXIS_CODES)
    )
    image = image.as_reoriented(to_canonical)
    return np.asanyarray(image.dataobj), image.affine


#: The header line naming the file that holds a MetaImage's (.mha/.mhd) or an NRRD's (.nrrd/.nhdr) voxels.
_DATA_FILE = re.compile(r"\s*(?:ElementDataFile\s*=|data ?file\s*:)(.*)", re.IGNORECASE)
_HEADER_BYTES = 1 << 16


def _check_data_file(path: Path) -> None:
    """Refuse a header whose voxels lie anywhere but in itself or in one plain file beside it: a header naming
    another path (``/etc/...``, ``../x.raw``, a device, a link, a LIST or pattern of files) would have the reader
    read outside the patient's folder."""
    with path.open("rb") as file:
        lines = file.read(_HEADER_BYTES).decode("latin-1").splitlines()
    nrrd = path.name.lower().endswith((".nrrd", ".nhdr"))
    for line in lines:
        if nrrd and not line.strip():
            return  # the end of an NRRD header that names no data file: the voxels follow it
        named = _DATA_FILE.fullmatch(line)
        if named is None:
            continue
        value = named.group(1).strip()
        if value.upper() == "LOCAL" and not nrrd:
            return
        beside = path.parent / value
        if not value or any(c in value for c in "/\\%:") or len(value.split()) != 1 or value.upper() == "LIST" \
                or value in (".", "..") or beside.is_symlink() or not beside.is_file():
            raise PatientDataError(path, f"the image's voxels must be in its header file or in one file beside "
                                   f"it, not {value!r}")
        return
    raise PatientDataError(path, f"no end of the image header in its first {_HEADER_BYTES // 1024} KiB")


def _read_with_simpleitk(path: Path, voxels: int | None) -> tuple[np.ndarray, np.ndarray]:
    import SimpleITK as sitk

    _check_data_file(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    if reader.GetDimension() != 3:
        raise PatientDataError(path, f"expected a 3D image, got a {reader.GetDimension()}D one")
    check_grid(reader.GetSize(), path)
    _check_voxel_count(reader.GetSize(), voxels, path)
    if reader.GetNumberOfComponents() != 1:
        raise PatientDataError(path, "voxels must be single real numbers (not colour, complex or other types)")
    # SimpleITK arrays are indexed (z, y, x): orient the image axes to I, L, P so the array is P, L, I.
    image = sitk.DICOMOrient(reader.Execute(), "".join(reversed(AXIS_CODES)))
    array = sitk.GetArrayFromImage(image)
    _check_voxel_type(array.dtype, path)
    # World (LPS) = origin + direction @ (spacing * (x, y, z)), and array index (i, j, k) is (z, y, x).
    steps = np.reshape(image.GetDirection(), (3, 3)) * np.asarray(image.GetSpacing())
    lps = np.eye(4)
    lps[:3, :3], lps[:3, 3] = steps[:, ::-1], image.GetOrigin()
    return array, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def _mm(spacing: tuple[float, ...] | np.ndarray) -> tuple[float, float, float]:
    """Spacing as the shortest decimal of its float32 value: headers store float32, 4.688 as 4.6880002."""
    as_decimal = [float(str(np.float32(s))) for s in spacing]
    return as_decimal[0], as_decimal[1], as_decimal[2]


def find_image(folder: Path, stem: str) -> Path | None:
    """The image file named ``stem`` with any supported extension, or None."""
    for suffix in _IMAGE_SUFFIXES:
        candidate = folder / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _stem(name: str) -> str:
    """A file name without its image suffix (``ct.nii.gz`` -> ``ct``)."""
    return next((name[: -len(suffix)] for suffix in _IMAGE_SUFFIXES if name.lower().endswith(suffix)), name)


def is_image_folder(folder: Path) -> bool:
    return find_image(folder, "ct") is not None


def read_patient(folder: str | Path) -> Patient:
    """Read a patient folder of images (see the module docstring for the layout)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PatientDataError(folder, "not a folder")
    warn_unmapped(sorted(entry.name for entry in folder.iterdir() if not entry.name.startswith(".")
                         and entry.name.lower().endswith(_IMAGE_SUFFIXES) and _stem(entry.name) not in IMAGE_STEMS), folder,
                  f"the images of a patient folder are named {', '.join(IMAGE_STEMS)}")
    volumes: dict[str, np.ndarray] = {}
    ct_frame: np.ndarray | None = None
    for stem in IMAGE_STEMS:
        path = find_image(folder, stem)
        if path is None:
            if stem in ("ct", "possible_dose_mask"):
                raise PatientDataError(folder, f"missing {stem}{NIFTI_SUFFIX} (or another image format)")
            continue
        volume, frame = read_volume(path, voxels=None if ct_frame is None else volumes["ct"].size)
        # Compact at once (a float64 mask is 8 times its bool): a folder of 13 large volumes fits in memory.
        volumes[stem] = volume.astype(np.float32, copy=False) if stem in ("ct", "dose") else binary_mask(stem, volume, path)
        if ct_frame is None:
            ct_frame = frame
        else:
            check_same_frame(path, frame, ct_frame, "the CT's")
    assert ct_frame is not None
    return Patient(
        id=folder.name,
        ct=volumes["ct"],
        structures={roi: volumes[roi] for roi in ROIS if roi in volumes},
        possible_dose_mask=volumes["possible_dose_mask"],
        spacing=spacing_of(ct_frame),
        dose=volumes.get("dose"),
        source=str(folder),
    )


def write_patient(patient: Patient, folder: str | Path) -> None:
    """Write a patient as a NIfTI folder (all files appear at once)."""
    with atomic_folder(folder) as tmp:
        write_volume(patient.ct, patient.spacing, tmp / f"ct{NIFTI_SUFFIX}")
        write_volume(patient.possible_dose_mask, patient.spacing, tmp / f"possible_dose_mask{NIFTI_SUFFIX}")
        if patient.dose is not None:
            write_volume(patient.dose, patient.spacing, tmp / f"dose{NIFTI_SUFFIX}")
        for roi, mask in patient.structures.items():
            write_volume(mask, patient.spacing, tmp / f"{roi}{NIFTI_SUFFIX}")
