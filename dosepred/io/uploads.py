"""Patients from untrusted places: a folder under a data root, an uploaded zip, uploaded NIfTI files.

Nothing outside the data root is ever read: absolute paths, '..' and symbolic links are refused, and a
patient folder that holds a link anywhere is refused before any file in it is opened. Zips are checked
before anything is written: size limits (archive, total unpacked, entry count), a compression-ratio
limit over the whole archive against zip bombs, names that stay inside the folder, fit a file system
and name distinct files (whatever the case), no links. Unpacking counts the bytes it writes and stops
at what the headers declared; it is all or nothing.
"""

from __future__ import annotations

import io
import lzma
import os
import re
import stat
import struct
import unicodedata
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from dosepred.io import sources
from dosepred.io.nifti import IMAGE_STEMS
from dosepred.io.errors import PatientDataError
from dosepred.io.files import atomic_folder

MAX_ARCHIVE_BYTES = 300 * 2**20
MAX_UNPACKED_BYTES = 1500 * 2**20
MAX_ENTRIES = 4000  # a clinic CT can hold several hundred slice files
MAX_RATIO = 100  # unpacked / archive bytes, over the whole archive (OpenKBP CSV folders: ~3, NIfTI: ~10, DICOM: ~3)
MAX_NAME_BYTES = 255  # one part of a path, as file systems allow
MAX_PATH_CHARS = 1024
# What zipfile and its decompressors raise for a corrupt, truncated, encrypted or unsupported archive.
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, lzma.LZMAError, struct.error, EOFError,
               NotImplementedError, RuntimeError, ValueError, OSError)


class UploadError(PatientDataError):
    """An upload or data-root path that is refused."""


def resolve_under(root: Path, relative: str) -> Path:
    """``root / relative``, refusing anything that could leave ``root``: '..', absolute paths and links,
    on the way and anywhere inside the folder it names."""
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
    for folder, subfolders, files in os.walk(path):  # follows no link; nothing for a pack file
        for name in subfolders + files:
            if (Path(folder) / name).is_symlink():
                inside = (Path(folder) / name).relative_to(root)
                raise UploadError(inside, "symbolic links are not followed under the data root; this patient "
                                  "folder holds one, so none of its files is read")
    return path


def patients_under(root: Path) -> list[str]:
    """Names of the patient folders and pack files directly under ``root`` (links skipped)."""
    if not root.is_dir():
        return []
    return [entry.name for entry in sorted(root.iterdir(), key=sources.natural_key)
            if not entry.is_symlink() and sources.is_patient(entry)]


def extract_zip(data: bytes, destination: Path, name: str = "upload.zip") -> Path:
    """Check and unpack an uploaded zip into ``destination``; return the one patient it holds. A zip of one
    patient's files (no folder) names the patient after the zip, as ``predict`` does; the browser's name for it
    is kept only when it is a plain id (letters, digits, '.', '_', '-')."""
    stem = sources.archive_stem(Path(name.replace("\\", "/")).name)
    folder = stem if re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}", stem) else "upload"
    patients = sources.find_patients(unpack_zip(data, destination, folder))
    if len(patients) != 1:
        raise UploadError("upload", f"expected one patient in the archive, found {len(patients)}")
    return patients[0]


def unpack_zip(archive_file: bytes | Path, destination: Path, folder: str = "upload") -> Path:
    """Check and unpack a zip (its bytes or its path) into ``destination/folder``, which is returned."""
    size = len(archive_file) if isinstance(archive_file, bytes) else archive_file.stat().st_size
    if size > MAX_ARCHIVE_BYTES:
        raise UploadError("upload", f"archive larger than {MAX_ARCHIVE_BYTES // 2**20} MiB")
    try:
        with zipfile.ZipFile(io.BytesIO(archive_file) if isinstance(archive_file, bytes) else archive_file) as archive:
            members = _checked_members(archive, size)
            with atomic_folder(destination / folder) as unpacked:
                for parts, entry in members:
                    _unpack(archive, entry, unpacked.joinpath(*parts))
    except UploadError:
        raise
    except _ZIP_ERRORS as error:
        raise UploadError("upload", "not a zip archive, or a corrupt, truncated, encrypted or unsupported one "
                          f"({type(error).__name__}: {_shown(str(error))})") from None
    return destination / folder


def _checked_members(archive: zipfile.ZipFile, archive_bytes: int) -> list[tuple[tuple[str, ...], zipfile.ZipInfo]]:
    """The files to unpack, each with the safe parts of its name; refuses what could escape, clash or blow up."""
    entries = archive.infolist()
    if len(entries) > MAX_ENTRIES:
        raise UploadError("upload", f"more than {MAX_ENTRIES} files in the archive")
    members: list[tuple[tuple[str, ...], zipfile.ZipInfo]] = []
    files: dict[tuple[str, ...], str] = {}
    folders: set[tuple[str, ...]] = set()
    for entry in entries:
        parts = _safe_parts(entry.filename)
        if stat.S_ISLNK(entry.external_attr >> 16):
            raise UploadError(_shown(entry.filename), "links are not allowed in the archive")
        if parts[0] == "__MACOSX":  # the Finder's resource forks: metadata, not patient files
            continue
        # One file per name as the file systems that matter see it: case and Unicode form do not count.
        key = tuple(unicodedata.normalize("NFC", part).casefold() for part in parts)
        folders.update(key[:n] for n in range(1, len(key)))
        if entry.is_dir():
            folders.add(key)
            continue
        if key in files:
            raise UploadError(_shown(entry.filename), f"names the same file as {_shown(files[key])} "
                              "(names that differ only in case are one file on many systems)")
        files[key] = entry.filename
        members.append((parts, entry))
    both = [name for key, name in files.items() if key in folders]
    if both:
        raise UploadError(_shown(both[0]), "is both a file and a folder in the archive")
    total = sum(entry.file_size for _, entry in members)
    if total > MAX_UNPACKED_BYTES:
        raise UploadError("upload", f"unpacks to more than {MAX_UNPACKED_BYTES // 2**20} MiB")
    if total > MAX_RATIO * archive_bytes:
        raise UploadError("upload", f"unpacks to more than {MAX_RATIO} times its size (zip bomb?)")
    return members


def _safe_parts(name: str) -> tuple[str, ...]:
    """The parts of a member's name ('\\' counts as '/'): relative, no '..', each part short enough."""
    text = name.replace("\\", "/")
    parts = tuple(part for part in text.split("/") if part not in ("", "."))
    if text.startswith("/") or ".." in parts or not parts:
        raise UploadError(_shown(name), "unsafe path in the archive (absolute, '..' or empty)")
    if len(text) > MAX_PATH_CHARS or any(len(os.fsencode(part)) > MAX_NAME_BYTES for part in parts):
        raise UploadError(_shown(name), f"name too long (at most {MAX_NAME_BYTES} bytes a part, "
                          f"{MAX_PATH_CHARS} characters in all)")
    return parts


def _unpack(archive: zipfile.ZipFile, entry: zipfile.ZipInfo, target: Path) -> None:
    """Write one member, never more bytes than its header declared (the declared total was bounded)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with archive.open(entry) as source, open(target, "xb") as sink:
        while chunk := source.read(min(2**20, entry.file_size + 1 - written)):
            written += len(chunk)
            if written > entry.file_size:
                raise UploadError(_shown(entry.filename), "larger than its header says")
            sink.write(chunk)


def _shown(name: str) -> str:
    return name if len(name) <= 100 else name[:100] + "..."


def save_images(files: list[tuple[str, bytes]], destination: Path) -> Path:
    """Write uploaded NIfTI files (named ct.nii.gz, possible_dose_mask.nii.gz, <ROI>.nii.gz, ...) as a patient."""
    if not files:
        raise UploadError("upload", "no files")
    stems = []
    for name, data in files:
        stem = name.removesuffix(".gz").removesuffix(".nii")
        if not name.endswith((".nii", ".nii.gz")) or stem not in IMAGE_STEMS:
            raise UploadError(_shown(name), f"expected NIfTI files named one of {', '.join(IMAGE_STEMS)} "
                              "(.nii or .nii.gz)")
        if len(data) > MAX_ARCHIVE_BYTES:
            raise UploadError(name, "file too large")
        if stem in stems:
            raise UploadError(name, f"a second file for {stem}; give one file per image")
        stems.append(stem)
    if "ct" not in stems:
        raise UploadError("upload", "ct.nii.gz is required")
    with atomic_folder(destination) as folder:
        for name, data in files:
            (folder / name).write_bytes(data)
    return destination
