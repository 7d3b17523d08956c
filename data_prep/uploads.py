"""Patients from untrusted places: a folder under a data root, an uploaded zip, uploaded NIfTI files.

Nothing outside the data root is ever read: absolute paths, '..' and symbolic links are refused. Zips
are checked before anything is written: size limits (archive, total unpacked, entry count), a
compression-ratio limit against zip bombs, no absolute or '..' paths, no links.
"""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path, PurePosixPath

from data_prep import sources
from data_prep.errors import PatientDataError
from data_prep.patient import ROIS

MAX_ARCHIVE_BYTES = 300 * 2**20
MAX_UNPACKED_BYTES = 1500 * 2**20
MAX_ENTRIES = 500
MAX_RATIO = 100  # unpacked / compressed, per entry (sparse CSVs compress ~10x)
IMAGE_STEMS = ("ct", "dose", "possible_dose_mask", *ROIS)


class UploadError(PatientDataError):
    """An upload or data-root path that is refused."""


def resolve_under(root: Path, relative: str) -> Path:
    """``root / relative``, refusing anything that could leave ``root``."""
    parts = PurePosixPath(relative.replace("\\", "/")).parts
    if not relative or PurePosixPath(relative).is_absolute() or ".." in parts:
        raise UploadError(relative or "(empty)", "paths must stay inside the data root (no '..', no absolute paths)")
    path = root
    for part in parts:
        path = path / part
        if path.is_symlink():
            raise UploadError(relative, "symbolic links are not followed")
    if not path.resolve().is_relative_to(root.resolve()):
        raise UploadError(relative, "outside the data root")
    return path


def patients_under(root: Path) -> list[str]:
    """Names of the patient folders and pack files directly under ``root`` (links skipped)."""
    if not root.is_dir():
        return []
    return [entry.name for entry in sorted(root.iterdir(), key=sources.natural_key)
            if not entry.is_symlink() and sources.is_patient(entry)]


def extract_zip(data: bytes, destination: Path) -> Path:
    """Check and unpack an uploaded zip; return the one patient it holds."""
    if len(data) > MAX_ARCHIVE_BYTES:
        raise UploadError("upload", f"archive larger than {MAX_ARCHIVE_BYTES // 2**20} MiB")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise UploadError("upload", "not a zip archive") from None
    with archive:
        entries = archive.infolist()
        if len(entries) > MAX_ENTRIES:
            raise UploadError("upload", f"more than {MAX_ENTRIES} files in the archive")
        total = 0
        for entry in entries:
            name = PurePosixPath(entry.filename)
            if name.is_absolute() or ".." in name.parts or entry.filename.startswith(("/", "\\")):
                raise UploadError(entry.filename, "unsafe path in the archive")
            if stat.S_ISLNK(entry.external_attr >> 16):
                raise UploadError(entry.filename, "links are not allowed in the archive")
            total += entry.file_size
            if total > MAX_UNPACKED_BYTES:
                raise UploadError("upload", f"unpacks to more than {MAX_UNPACKED_BYTES // 2**20} MiB")
            if entry.file_size > MAX_RATIO * max(entry.compress_size, 1) and entry.file_size > 2**20:
                raise UploadError(entry.filename, "compression ratio too high (zip bomb?)")
        for entry in entries:
            target = destination / entry.filename
            if entry.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(entry) as source, open(target, "wb") as sink:
                remaining = entry.file_size + 1  # never write more than the header promised
                while chunk := source.read(min(2**20, remaining)):
                    remaining -= len(chunk)
                    if remaining <= 0:
                        raise UploadError(entry.filename, "larger than its header says")
                    sink.write(chunk)
    patients = sources.find_patients(destination)
    if len(patients) != 1:
        raise UploadError("upload", f"expected one patient in the archive, found {len(patients)}")
    return patients[0]


def save_images(files: list[tuple[str, bytes]], destination: Path) -> Path:
    """Write uploaded NIfTI files (named ct.nii.gz, possible_dose_mask.nii.gz, <ROI>.nii.gz, ...) as a patient."""
    if not files:
        raise UploadError("upload", "no files")
    for name, data in files:
        stem = name.removesuffix(".gz").removesuffix(".nii")
        if not name.endswith((".nii", ".nii.gz")) or stem not in IMAGE_STEMS:
            raise UploadError(name, f"expected NIfTI files named one of {', '.join(IMAGE_STEMS)} (.nii or .nii.gz)")
        if len(data) > MAX_ARCHIVE_BYTES:
            raise UploadError(name, "file too large")
    if not any(name.startswith("ct.nii") for name, _ in files):
        raise UploadError("upload", "ct.nii.gz is required")
    destination.mkdir(parents=True, exist_ok=True)
    for name, data in files:
        (destination / Path(name).name).write_bytes(data)
    return destination
