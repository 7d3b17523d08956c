"""DICOM RT Dose export.

Frame of reference. A patient read from a clinic's DICOM (``patient.clinic``) gets its dose on the CT's own
grid, cropped to the box where the dose is not 0, in the CT's frame of reference: the same
FrameOfReferenceUID, study and patient attributes, positions and orientation from the CT. An OpenKBP
patient keeps no DICOM frame, so its dose is placed in the frame of dosepred's NIfTI files
(``dosepred.io.nifti``), in a new frame of reference and study: voxel (i, j, k) sits at x = spacing1 * j
(towards the patient's left), y = spacing0 * i (posterior), z = -spacing2 * k (superior is +z).

Plan reference. A predicted dose belongs to no plan. The standard's summation types (PLAN, BEAM,
FRACTION, ...) each require a Referenced RT Plan (or treatment record) Sequence; rather than point to a
plan that does not exist, DoseSummationType is the implementation-defined term ``PREDICTED``, which the
standard allows for defined terms (dciodvfy reports it as a warning, not an error).
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np

from dosepred import __version__
from dosepred.io.clinic import Grid, from_patient_axes, own_frame_grid
from dosepred.io.files import atomic_file
from dosepred.io.patient import Patient

RT_DOSE_STORAGE = "1.2.840.10008.5.1.4.1.1.481.2"
DOSE_SUMMATION_TYPE = "PREDICTED"
#: 16-bit dose values: 1 mGy steps at 65 Gy, and every validator reads them (dciodvfy cannot check 32-bit).
_LEVELS = 2**16 - 1


def write_rt_dose(patient: Patient, dose: np.ndarray, path: Path, *, model: str = "") -> None:
    """Write ``dose`` (Gy, on the patient's grid) as a DICOM RT Dose file (see the module docstring); ``model``
    (the model that predicted it) goes into ManufacturerModelName."""
    from pydicom.uid import generate_uid

    if not (np.isfinite(dose).all() and dose.min() >= 0):
        raise ValueError("an RT Dose holds finite doses of at least 0 Gy")
    if patient.clinic is not None:
        on_grid, grid = _crop(patient.clinic.dose_on_ct(dose), patient.clinic.ct_grid)
        attributes = dict(patient.clinic.attributes)
    else:
        on_grid, grid = from_patient_axes(np.asarray(dose, dtype=np.float32)), own_frame_grid(patient)
        attributes = {"PatientID": patient.id, "PatientName": patient.id, "StudyInstanceUID": generate_uid(),
                      "FrameOfReferenceUID": generate_uid()}
    _write(on_grid, grid, attributes, path, model)


def read_rt_dose(path: Path) -> tuple[np.ndarray, Grid]:
    """Read an RT Dose: the dose (Gy, [frame, row, column]) and its grid (frames along the slice normal)."""
    import pydicom

    ds = pydicom.dcmread(path)
    frames = ds.pixel_array.reshape(int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns))
    orientation = np.asarray(ds.ImageOrientationPatient, dtype=float)
    offsets = np.asarray(ds.GridFrameOffsetVector, dtype=float)
    step = float(offsets[1] - offsets[0]) if len(offsets) > 1 else 1.0
    normal = np.cross(orientation[:3], orientation[3:])
    direction = np.stack([orientation[:3], orientation[3:], normal], axis=1)
    origin = np.asarray(ds.ImagePositionPatient, dtype=float) + offsets[0] * normal
    row, column = (float(v) for v in ds.PixelSpacing)
    grid = Grid(tuple(origin), (column, row, step), tuple(direction.ravel()), (int(ds.Columns), int(ds.Rows), len(offsets)))
    return frames.astype(np.float64) * float(ds.DoseGridScaling), grid


def _crop(dose: np.ndarray, grid: Grid) -> tuple[np.ndarray, Grid]:
    """The box of ``dose`` ([z, y, x]) where it is not 0, and that box's grid (a whole-grid slab if all 0)."""
    where = np.argwhere(dose > 0)
    if where.size == 0:
        return dose[:1], Grid(grid.origin, grid.spacing, grid.direction, (grid.size[0], grid.size[1], 1))
    low, high = where.min(0), where.max(0) + 1
    origin = grid.to_lps(low[::-1][None].astype(float))[0]
    size = tuple(int(n) for n in (high - low)[::-1])
    return dose[low[0]:high[0], low[1]:high[1], low[2]:high[2]], Grid(tuple(origin), grid.spacing, grid.direction, size)


def _write(dose: np.ndarray, grid: Grid, attributes: dict[str, str], path: Path, model: str) -> None:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    direction = np.reshape(grid.direction, (3, 3))
    row_dir, column_dir, frame_dir = direction[:, 0], direction[:, 1], direction[:, 2]
    if np.dot(frame_dir, np.cross(row_dir, column_dir)) < 0:  # frames must advance along the slice normal
        origin = grid.to_lps(np.array([[0.0, 0.0, grid.size[2] - 1]]))[0]
        dose = dose[::-1]
    else:
        origin = np.asarray(grid.origin)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = RT_DOSE_STORAGE, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: a patient's name comes back as the CT spelt it, in any script
    now = datetime.datetime.now()
    for key in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyID",
                "AccessionNumber", "ReferringPhysicianName", "PositionReferenceIndicator", "OperatorsName"):
        setattr(ds, key, attributes.get(key, ""))  # type 2: present, empty when unknown
    ds.SOPClassUID, ds.SOPInstanceUID = RT_DOSE_STORAGE, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.FrameOfReferenceUID = attributes["StudyInstanceUID"], attributes["FrameOfReferenceUID"]
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = generate_uid(), 1, 1
    ds.Modality, ds.Manufacturer = "RTDOSE", "dosepred"
    ds.ManufacturerModelName, ds.SoftwareVersions = model[-64:], f"dosepred {__version__}"  # LO: 64 characters
    ds.SeriesDescription = "predicted dose (research use only)"
    ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.DoseUnits, ds.DoseType, ds.DoseSummationType = "GY", "PHYSICAL", DOSE_SUMMATION_TYPE
    scaling = max(float(dose.max()), 1e-6) / _LEVELS
    column_step, row_step, frame_step = grid.spacing
    ds.NumberOfFrames, ds.Rows, ds.Columns = dose.shape
    ds.PixelSpacing = [_ds(row_step), _ds(column_step)]
    ds.ImageOrientationPatient = [_ds(v) for v in (*row_dir, *column_dir)]
    ds.ImagePositionPatient = [_ds(v) for v in origin]
    ds.SliceThickness = _ds(frame_step)
    ds.GridFrameOffsetVector = [_ds(frame_step * n) for n in range(dose.shape[0])]
    ds.FrameIncrementPointer = 0x3004000C
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.DoseGridScaling = _ds(scaling)
    ds.PixelData = np.round(np.ascontiguousarray(dose, dtype=np.float64) / scaling).astype(np.uint16).tobytes()
    with atomic_file(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)


def _ds(value: float) -> str:
    """A decimal string of at most 16 characters (DICOM DS)."""
    text = f"{float(value):.10g}"
    return text if len(text) <= 16 else f"{float(value):.9e}"
