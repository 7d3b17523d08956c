"""Where patients come from: one patient folder (OpenKBP CSV, images or a clinic's DICOM), a split folder of
them, a pack, or a ``.tar.xz`` / ``.zip`` of them.

Every reader is chosen from what a path holds, so commands take any of these without a format flag.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from dosepred.io import dicom_in, nifti, openkbp_csv, pack
from dosepred.io.errors import PatientDataError
from dosepred.io.files import temporary_folder
from dosepred.io.patient import Patient, check_dose
from dosepred.io.roi_names import RoiNames

_TARBALL_SUFFIXES = (".tar.xz", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar")


def natural_key(path: Path) -> tuple:
    """Sort pt_2 before pt_10."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name))


def is_patient(path: Path) -> bool:
    return pack.is_pack_file(path) or path.is_dir() and (
        openkbp_csv.is_openkbp_folder(path) or nifti.is_image_folder(path) or dicom_in.is_dicom_folder(path))


def find_patients(source: Path) -> list[Path]:
    """The patients in ``source``: itself if it is one patient, else its patient entries (sorted).

    In a split folder every sub-folder and pack file is a patient entry, recognised or not, so one that
    cannot be read fails with its own message instead of vanishing from the count; hidden entries and
    other files (README.md) are not patients.

    Raises:
        PatientDataError: ``source`` is missing, empty, or holds no patient.
    """
    if not source.exists():
        raise PatientDataError(source, "no such file or folder")
    if is_patient(source):
        return [source]
    if not source.is_dir():
        raise PatientDataError(source, "not a patient folder, a split folder, a pack or a tarball")
    entries = sorted(source.iterdir(), key=natural_key)
    if not entries:
        raise PatientDataError(source, "empty folder")
    candidates = [entry for entry in entries
                  if not entry.name.startswith(".") and (entry.is_dir() or entry.suffix == pack.SUFFIX)]
    if not any(is_patient(entry) for entry in candidates):
        # A single split folder one level down (an extracted tarball holds ``train-pats/``).
        if len(candidates) == 1 and candidates[0].is_dir():
            return find_patients(candidates[0])
        raise PatientDataError(source, "holds no patient (OpenKBP CSV folders, image folders, DICOM folders or pack files)")
    return candidates


@contextlib.contextmanager
def open_patients(source: str | Path) -> Iterator[list[Path]]:
    """Yield the patient paths of ``source``; a tarball or zip is unpacked to a temporary folder first."""
    from dosepred.io.uploads import UploadError, unpack_tar, unpack_zip  # uploads reads patients through this module

    source = Path(source)
    unpack = (unpack_zip if source.suffix.lower() == ".zip" else unpack_tar if source.name.endswith(_TARBALL_SUFFIXES)
              else None) if source.is_file() else None
    if unpack is None:
        yield find_patients(source)
        return
    with temporary_folder() as tmp:
        try:
            root = unpack(source, Path(tmp), folder=_archive_stem(source))
        except UploadError as error:  # the unpackers serve the viewer's uploads too: name the file here
            member = "" if error.where in ("upload", str(source)) else f"{error.where}: "
            raise UploadError(source, member + error.problem) from None
        yield find_patients(root)


def archive_stem(name: str) -> str:
    """An archive's file name without its suffix (``pt_201.zip`` -> ``pt_201``): the patient id of an archive
    that holds one patient's files at its top, as a folder's name is its patient's."""
    for suffix in (".zip", *_TARBALL_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _archive_stem(archive: Path) -> str:
    name = archive_stem(archive.name)
    if not name or name.startswith("."):
        raise PatientDataError(archive, "an archive's name gives its patient's id: name it like pt_201.zip")
    return name


def read_patient(path: str | Path, roi_names: RoiNames | None = None) -> Patient:
    """Read one patient from an OpenKBP CSV folder, an image folder, a DICOM folder or a pack file.

    The patient's id is the folder's or the pack file's name (a pack whose header says otherwise is refused).

    ``roi_names`` maps a DICOM patient's ROI names (the shipped table by default).
    """
    path = Path(path)
    if pack.is_pack_file(path):
        patient = pack.read_patient(path)
        if patient.id != path.stem:  # outputs are named by id: another name would collide and break --continue
            raise PatientDataError(path, f"holds patient {patient.id!r}; a pack file's name must be its patient id")
        return patient
    if path.is_dir() and not openkbp_csv.is_openkbp_folder(path):
        if nifti.is_image_folder(path):
            return nifti.read_patient(path)
        if dicom_in.is_dicom_folder(path):
            return dicom_in.read_dicom_patient(path, roi_names)
    return openkbp_csv.read_patient(path)


def find_dose_file(folder: Path, patient_id: str) -> Path | None:
    """A predicted dose for ``patient_id`` in ``folder``: ``<id>.csv`` (OpenKBP submission) or ``<id>.nii.gz``."""
    for name in (f"{patient_id}.csv", f"{patient_id}.nii.gz", f"{patient_id}.nii"):
        if (folder / name).is_file():
            return folder / name
    return None


def read_dose_file(path: Path, shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> np.ndarray:
    """Read a dose volume (OpenKBP sparse CSV or NIfTI) that must lie on a grid of ``shape``.

    An image also carries its voxel spacing and orientation: a dose on another ``spacing`` than the reference
    patient's, or another orientation, is refused, as its voxels would be scored against the
    wrong ones. (Patients keep no position, so the image's own origin is not compared.)
    """
    if path.suffix == ".csv":
        dose = openkbp_csv.read_dense(path, shape)
    else:
        dose, affine = nifti.read_volume(path)
        if dose.shape != tuple(shape):
            raise PatientDataError(path, f"dose grid {dose.shape} differs from the patient's {tuple(shape)}")
        expected = nifti.affine_from_spacing(spacing)
        expected[:3, 3] = affine[:3, 3]
        nifti.check_same_frame(path, affine, expected, "the reference patient's")
        dose = dose.astype(np.float32)
    check_dose(dose, path)
    return dose
