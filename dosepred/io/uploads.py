"""Patients from untrusted places: a folder under a data root, a zip or tarball, uploaded NIfTI files.

Nothing outside the data root is ever read: absolute paths, '..' and symbolic links are refused, and a
patient folder that holds a link anywhere is refused before any file in it is opened. Zips are checked
before anything is written: size limits (archive, total unpacked, entry count), a compression-ratio
limit over the whole archive against zip bombs, names that stay inside the folder, fit a file system
and name distinct files (whatever the case), no links. Unpacking counts the bytes it writes and stops
at what the headers declared; it is all or nothing.

Tarballs are unpacked by the same rules as they stream (a tarball has no index to check first): regular files
and folders only (tarfile's own "data" filter lets links through and has been bypassed, CVE-2025-4517), and the
decompressed stream itself is bounded, extended headers included, which tarfile reads whole.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import re
import stat
import struct
import tarfile
import unicodedata
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import BinaryIO

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
#: Bounds on what a tarball unpacks to (OpenKBP's training split: 2153 files, 869 MiB, 6.6 times its .tar.xz).
MAX_TAR_UNPACKED_BYTES = 16 * 2**30
MAX_TAR_ENTRIES = 200_000
MAX_TAR_RATIO = 100
MAX_TAR_HEADER_BYTES = 2**20  # a pax or GNU long-name header: names and a few attributes
_TAR_ERRORS = (tarfile.TarError, EOFError, OSError, lzma.LZMAError, zlib.error, ValueError)
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
                    _write(archive.open(entry), unpacked.joinpath(*parts), entry.file_size, entry.filename)
    except UploadError:
        raise
    except _ZIP_ERRORS as error:
        raise UploadError("upload", "not a zip archive, or a corrupt, truncated, encrypted or unsupported one "
                          f"({type(error).__name__}: {_shown(str(error))})") from None
    return destination / folder


def unpack_tar(archive_file: Path, destination: Path, folder: str) -> Path:
    """Unpack a tarball (plain, .gz, .bz2 or .xz) into ``destination/folder``, which is returned, by the rules above."""
    limit = min(MAX_TAR_UNPACKED_BYTES, MAX_TAR_RATIO * archive_file.stat().st_size)
    names = _DistinctNames()
    written: set[tuple[str, ...]] = set()
    try:
        with open(archive_file, "rb") as raw, _decompressed(raw) as stream, \
                tarfile.open(fileobj=(bounded := _Bounded(stream, limit, archive_file)), mode="r|",
                             tarinfo=_BoundedHeader) as archive, \
                atomic_folder(destination / folder) as unpacked:
            for count, member in enumerate(archive, 1):
                if count > MAX_TAR_ENTRIES:
                    raise UploadError(archive_file, f"more than {MAX_TAR_ENTRIES} files in the archive")
                if member.isdir():
                    if PurePosixPath(member.name).parts:  # not "./", the archive's own top
                        names.add(_safe_parts(member.name), member.name, folder=True)
                    continue
                parts = _safe_parts(member.name)
                link = _safe_parts(member.linkname) if member.islnk() else None
                if not (member.isreg() or link in written):
                    raise UploadError(_shown(member.name), "symbolic links, hard links to no file before them and "
                                      "special files are not allowed in the archive")
                if parts in written:  # a name repeated (tar -r): the last copy wins, as tar's own rule is
                    unpacked.joinpath(*parts).unlink()
                elif not names.add(parts, member.name, folder=False):
                    continue
                written.add(parts)
                if link is None:
                    _write(archive.extractfile(member), unpacked.joinpath(*parts), member.size, member.name)
                else:  # a hard link to a file written here: a copy, counted as unpacked bytes
                    size = unpacked.joinpath(*link).stat().st_size
                    bounded.take(size)
                    _write(unpacked.joinpath(*link).open("rb"), unpacked.joinpath(*parts), size, member.name)
    except UploadError:
        raise
    except _TAR_ERRORS as error:
        raise UploadError(archive_file, f"cannot unpack archive ({type(error).__name__}: {_shown(str(error))})") from None
    return destination / folder


def _decompressed(raw: BinaryIO) -> BinaryIO:
    """The tarball's bytes, decompressed by its magic number (a file's suffix says nothing for sure)."""
    magic = raw.read(6)
    raw.seek(0)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=raw)
    if magic.startswith(b"BZh"):
        return bz2.BZ2File(raw)
    if magic == b"\xfd7zXZ\x00":
        return lzma.LZMAFile(raw)
    return raw


class _Bounded(io.RawIOBase):
    """A stream that refuses to give more than ``limit`` bytes in all (a bomb stops before it fills memory or disk)."""

    def __init__(self, stream: BinaryIO, limit: int, archive: Path) -> None:
        self.stream, self.left, self.limit, self.archive = stream, limit, limit, archive

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self.stream.read(min(len(buffer), self.left + 1))
        self.take(len(data))
        buffer[: len(data)] = data
        return len(data)

    def take(self, size: int) -> None:
        """Count ``size`` more bytes unpacked (read from the stream, or copied for a hard link)."""
        if size > self.left:
            raise UploadError(self.archive, f"unpacks to more than {self.limit // 2**20} MiB ({MAX_TAR_RATIO} times "
                              f"its size at most)")
        self.left -= size


class _BoundedHeader(tarfile.TarInfo):
    """A member header that refuses an extended header larger than a name needs: tarfile reads it whole."""

    def _proc_member(self, archive: tarfile.TarFile) -> tarfile.TarInfo:
        extended = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
                    tarfile.GNUTYPE_LONGLINK)
        if self.type in extended and self.size > MAX_TAR_HEADER_BYTES:
            raise UploadError(_shown(self.name), f"an extended header of {self.size} bytes (at most "
                              f"{MAX_TAR_HEADER_BYTES}): not a tarball of patients")
        return super()._proc_member(archive)


class _DistinctNames:
    """The names an archive unpacks to, refused when two name one file as file systems see it (case and Unicode
    form do not count) or one is both a file and a folder."""

    def __init__(self) -> None:
        self.files: dict[tuple[str, ...], str] = {}
        self.folders: set[tuple[str, ...]] = set()

    def add(self, parts: tuple[str, ...], name: str, *, folder: bool) -> bool:
        """Record a member; False for one that is not unpacked (the Finder's ``__MACOSX`` resource forks)."""
        if parts[0] == "__MACOSX":
            return False
        key = tuple(unicodedata.normalize("NFC", part).casefold() for part in parts)
        folders = {key[:n] for n in range(1, len(key) + 1 if folder else len(key))}  # its parents, and itself if a folder
        if not folder and key in self.files:
            raise UploadError(_shown(name), f"names the same file as {_shown(self.files[key])} (names that differ "
                              "only in case are one file on many systems)")
        if folders & self.files.keys() or not folder and key in self.folders:
            raise UploadError(_shown(name), "is both a file and a folder in the archive")
        self.folders |= folders
        if not folder:
            self.files[key] = name
        return True


def _checked_members(archive: zipfile.ZipFile, archive_bytes: int) -> list[tuple[tuple[str, ...], zipfile.ZipInfo]]:
    """The files to unpack, each with the safe parts of its name; refuses what could escape, clash or blow up."""
    entries = archive.infolist()
    if len(entries) > MAX_ENTRIES:
        raise UploadError("upload", f"more than {MAX_ENTRIES} files in the archive")
    members: list[tuple[tuple[str, ...], zipfile.ZipInfo]] = []
    names = _DistinctNames()
    for entry in entries:
        parts = _safe_parts(entry.filename)
        if stat.S_ISLNK(entry.external_attr >> 16):
            raise UploadError(_shown(entry.filename), "links are not allowed in the archive")
        if names.add(parts, entry.filename, folder=entry.is_dir()) and not entry.is_dir():
            members.append((parts, entry))
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


def _write(source: BinaryIO | None, target: Path, size: int, name: str) -> None:
    """Write one member, never more bytes than its header declared (the declared total was bounded)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with source or io.BytesIO() as source, open(target, "xb") as sink:
        while chunk := source.read(min(2**20, size + 1 - written)):
            written += len(chunk)
            if written > size:
                raise UploadError(_shown(name), "larger than its header says")
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
