"""OpenKBP sparse CSVs: read and write patient folders and the submission format.

Each file has the header ``,data`` and rows ``flat_index,value`` (C order over the grid). Mask files
leave the value empty. numpy's C parser reads a file in one pass and names the line of a garbled row.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np

from dosepred.io.errors import PatientDataError, reading
from dosepred.io.files import atomic_file, atomic_folder
from dosepred.io.patient import CT_FILE_OFFSET, GRID_SHAPE, ROIS, Patient, check_dose, require_grid
from dosepred.io.roi_names import warn_unmapped

HEADER = b",data"
REQUIRED_FILES = ("ct.csv", "possible_dose_mask.csv", "voxel_dimensions.csv")
KNOWN_FILES = (*REQUIRED_FILES, "dose.csv", *(f"{roi}.csv" for roi in ROIS))
#: A row is at most ~30 bytes ("2097151,-1000.1234567e+300"): a file longer than this many bytes per
#: voxel holds more rows than the grid has voxels, and is refused before it is parsed.
MAX_ROW_BYTES = 64
MAX_SPACING_BYTES = 1024


def read_sparse(path: Path, *, values: bool, n_voxels: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Read one sparse CSV into (indices, values); values is None for a mask file.

    Messages say what was expected and where, never what the file holds (it may not be a CSV at all).

    Raises:
        PatientDataError: wrong header, too large, garbled or truncated rows, indices out of range or
            repeated, non-finite values, mask values other than empty or 1.
    """
    header, size, ends_cleanly = _header_size_and_ending(path)
    if header.strip() != HEADER:
        raise PatientDataError(path, f"wrong header: the first line must be {HEADER.decode()!r}")
    if size > len(header) + MAX_ROW_BYTES * n_voxels:
        raise PatientDataError(path, f"too large for a grid of {n_voxels} voxels (one row per voxel at most)")
    if not ends_cleanly:
        raise PatientDataError(path, "the last row is cut off (file truncated?)")
    # Mask values are read as 2-byte strings: enough to tell empty and "1" from anything else.
    row = [("index", "<i8"), ("value", "<f8" if values else "S2")]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # numpy warns about a file with no rows
            table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=1, dtype=row, comments=None, encoding="latin-1")
    except ValueError as error:
        raise PatientDataError(path, _garbled(str(error), values)) from None
    indices = table["index"]
    if indices.size and (indices.min() < 0 or indices.max() >= n_voxels):
        bad = np.flatnonzero((indices < 0) | (indices >= n_voxels))[0]
        raise PatientDataError(path, f"line {bad + 2}: index out of range for a grid of {n_voxels} voxels")
    if indices.size > 1 and not (np.diff(indices) > 0).all() and np.unique(indices).size != indices.size:
        raise PatientDataError(path, "an index appears more than once")
    if not values:
        not_binary = np.flatnonzero((table["value"] != b"") & (table["value"] != b"1"))
        if not_binary.size:
            line = not_binary[0] + 2
            raise PatientDataError(path, f"line {line}: a mask value must be empty or 1 (masks are binary)")
        return indices, None
    if not np.isfinite(table["value"]).all():
        raise PatientDataError(path, "values contain NaN or infinity")
    return indices, table["value"]


def _header_size_and_ending(path: Path) -> tuple[bytes, int, bool]:
    """The first line (read up to a bound), the file size, and whether the file ends with a line break."""
    with reading(path), open(path, "rb") as handle:
        header = handle.readline(len(HEADER) + 16)
        size = handle.seek(0, 2)
        if size <= len(header):
            return header, size, True
        handle.seek(-1, 2)
        return header, size, handle.read(1) == b"\n"


def _garbled(message: str, values: bool) -> str:
    """numpy's message quotes the offending text: keep only its place. numpy counts data rows from 0;
    people count file lines from 1, the header being line 1."""
    found = re.search(r"at row (\d+)", message)
    place = f" at line {int(found.group(1)) + 2}" if found else ""
    expected = "'index,value': a whole-number index and a number" if values else "'index,': a whole-number index"
    return f"garbled row{place}; expected {expected}"


def read_dense(path: Path, shape: tuple[int, ...] = GRID_SHAPE, *, offset: float = 0.0) -> np.ndarray:
    """Read a sparse value file (CT, dose) into a dense float32 volume of ``file value + offset``."""
    indices, data = read_sparse(path, values=True, n_voxels=int(np.prod(shape)))
    volume = np.full(int(np.prod(shape)), offset, dtype=np.float32)
    volume[indices] = data + offset
    return volume.reshape(shape)


def read_mask(path: Path, shape: tuple[int, ...] = GRID_SHAPE) -> np.ndarray:
    """Read a sparse mask file into a dense bool volume."""
    indices, _ = read_sparse(path, values=False, n_voxels=int(np.prod(shape)))
    mask = np.zeros(int(np.prod(shape)), dtype=bool)
    mask[indices] = True
    return mask.reshape(shape)


def read_spacing(path: Path) -> tuple[float, float, float]:
    """Read ``voxel_dimensions.csv``: three positive numbers in mm, one per line."""
    expected = "expected 3 positive voxel sizes in mm, one per line"
    with reading(path), open(path, "rb") as handle:
        data = handle.read(MAX_SPACING_BYTES + 1)
    if len(data) > MAX_SPACING_BYTES:
        raise PatientDataError(path, f"{expected}; the file is far longer")
    try:
        spacing = [float(token) for token in data.decode("latin-1").replace(",", " ").split()]
    except ValueError:
        raise PatientDataError(path, f"{expected}; found something that is not a number") from None
    if len(spacing) != 3:
        raise PatientDataError(path, f"{expected}; found {len(spacing)} numbers")
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise PatientDataError(path, f"{expected}; got {spacing}")
    return spacing[0], spacing[1], spacing[2]


def is_openkbp_folder(folder: Path) -> bool:
    return (folder / "ct.csv").is_file() or (folder / "possible_dose_mask.csv").is_file()


def read_patient(folder: str | Path) -> Patient:
    """Read one OpenKBP patient folder (``ct.csv``, ``possible_dose_mask.csv``, ROI files, ...)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PatientDataError(folder, "not a folder")
    if not any(folder.iterdir()):
        raise PatientDataError(folder, "empty folder; expected OpenKBP files (ct.csv, possible_dose_mask.csv, ...)")
    # A misnamed file is left out (a renamed PTV70.csv changes the targets): say so.
    warn_unmapped(sorted(entry.name for entry in folder.iterdir() if entry.suffix.lower() == ".csv"
                         and not entry.name.startswith(".") and entry.name not in KNOWN_FILES), folder,
                  f"the CSV files of an OpenKBP folder are named {', '.join(KNOWN_FILES)}")
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise PatientDataError(folder, f"missing {', '.join(missing)}")
    dose_file = folder / "dose.csv"
    dose = read_dense(dose_file) if dose_file.is_file() else None
    if dose is not None:
        check_dose(dose, dose_file)
    return Patient(
        id=folder.name,
        ct=read_dense(folder / "ct.csv", offset=-CT_FILE_OFFSET),
        structures={roi: read_mask(folder / f"{roi}.csv") for roi in ROIS if (folder / f"{roi}.csv").is_file()},
        possible_dose_mask=read_mask(folder / "possible_dose_mask.csv"),
        spacing=read_spacing(folder / "voxel_dimensions.csv"),
        dose=dose,
        source=str(folder),
    )


def write_sparse(path: Path, volume: np.ndarray) -> None:
    """Write the non-zero voxels of a value volume (or the True voxels of a mask) as a sparse CSV."""
    flat = volume.reshape(-1)
    indices = np.flatnonzero(flat)
    if flat.dtype == bool:
        rows = "".join(f"{i},\n" for i in indices.tolist())
    else:
        # %.7g round-trips every value stored with up to 7 significant digits (OpenKBP uses 3 decimals).
        rows = "".join(f"{i},{v:.7g}\n" for i, v in zip(indices.tolist(), flat[indices].tolist()))
    with atomic_file(path) as tmp:
        tmp.write_text(",data\n" + rows)


def write_patient(patient: Patient, folder: str | Path) -> None:
    """Write a patient as an OpenKBP folder (all files appear at once); the grid must be 128^3."""
    require_grid(patient)
    with atomic_folder(folder) as tmp:
        write_sparse(tmp / "ct.csv", patient.ct + CT_FILE_OFFSET)
        if patient.dose is not None:
            write_sparse(tmp / "dose.csv", patient.dose)
        write_sparse(tmp / "possible_dose_mask.csv", patient.possible_dose_mask)
        for roi, mask in patient.structures.items():
            write_sparse(tmp / f"{roi}.csv", mask)
        (tmp / "voxel_dimensions.csv").write_text("".join(f"{s!r}\n" for s in patient.spacing))


def write_submission(dose: np.ndarray, path: str | Path) -> None:
    """Write a predicted dose in the OpenKBP submission format (``pt_*.csv``, non-zero voxels only)."""
    if dose.shape != GRID_SHAPE:
        raise PatientDataError(path, f"an OpenKBP submission holds a {GRID_SHAPE} grid, got {dose.shape}")
    write_sparse(Path(path), np.asarray(dose, dtype=np.float32))
