"""DICOM RT Dose export (needs pydicom: the 'dicom' extra).

Frame of reference: OpenKBP keeps no DICOM frame, so the dose is placed in the same frame as dosepred's
NIfTI files (see ``dosepred.io.nifti``), written in DICOM patient coordinates (LPS): voxel (i, j, k) sits
at x = spacing1 * j (towards the patient's left), y = spacing0 * i (posterior), z = -spacing2 * k
(superior is +z, and axis 2 runs inferior). A new FrameOfReferenceUID is generated, so the dose lines up
with images exported by dosepred, not with the patient's original planning CT.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np

from dosepred.io.files import atomic_file
from dosepred.io.patient import Patient

RT_DOSE_STORAGE = "1.2.840.10008.5.1.4.1.1.481.2"


def write_rt_dose(patient: Patient, dose: np.ndarray, path: Path) -> None:
    """Write ``dose`` (Gy, on the patient's grid) as a DICOM RT Dose file."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RT_DOSE_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    now = datetime.datetime.now()
    ds.SOPClassUID, ds.SOPInstanceUID = RT_DOSE_STORAGE, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = generate_uid(), generate_uid(), generate_uid()
    ds.Modality, ds.PatientID, ds.PatientName = "RTDOSE", patient.id, patient.id
    ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.Manufacturer, ds.SeriesDescription = "dosepred", "predicted dose (research use only)"
    ds.DoseUnits, ds.DoseType, ds.DoseSummationType = "GY", "PHYSICAL", "PLAN"
    # Frames are axial slices ordered by increasing z (axis 2 reversed); rows run along axis 0, columns axis 1.
    frames = np.ascontiguousarray(np.moveaxis(np.asarray(dose, dtype=np.float64), 2, 0)[::-1])
    scaling = max(float(frames.max()), 1e-6) / (2**32 - 1)
    pixels = np.round(frames / scaling).astype(np.uint32)
    s0, s1, s2 = patient.spacing
    ds.NumberOfFrames, ds.Rows, ds.Columns = frames.shape
    ds.PixelSpacing = [s0, s1]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0.0, 0.0, -s2 * (frames.shape[0] - 1)]
    ds.GridFrameOffsetVector = [s2 * f for f in range(frames.shape[0])]
    ds.FrameIncrementPointer = 0x3004000C
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 32, 32, 31, 0
    ds.DoseGridScaling = f"{scaling:.10e}"[:16]
    ds.PixelData = pixels.tobytes()
    with atomic_file(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)


def read_rt_dose(path: Path) -> np.ndarray:
    """Read a file written by ``write_rt_dose`` back onto the OpenKBP axes (for tests and round trips)."""
    import pydicom

    ds = pydicom.dcmread(path)
    frames = ds.pixel_array.astype(np.float64) * float(ds.DoseGridScaling)
    return np.moveaxis(frames[::-1], 0, 2)
