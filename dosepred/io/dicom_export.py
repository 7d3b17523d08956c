"""An OpenKBP patient written out as a clinic would hold it: a DICOM CT series and an RTSTRUCT.

For testing the DICOM route on real anatomy (``tests/io``, ``benchmarks/dicom_round_trip.py``): the CT is
interpolated onto clinic-like pixels (e.g. 0.98 mm on 512 x 512 slices, the same slices as the patient),
the structures become contours with TG-263 names, and the whole patient sits at a chosen origin in DICOM
patient coordinates (LPS), so a reader that ignored the geometry would miss.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np

from dosepred.io.clinic import Grid, patient_grid
from dosepred.io.dicom_in import CT_IMAGE_STORAGE, RT_STRUCTURE_SET_STORAGE
from dosepred.io.files import atomic_folder
from dosepred.io.patient import Patient

_UP = 4  # contour upsampling (see _structure_set)
#: TG-263 names of OpenKBP's structures, and the body outline.
TG263_NAMES: dict[str, str] = {
    "Brainstem": "Brainstem", "SpinalCord": "SpinalCord", "RightParotid": "Parotid_R", "LeftParotid": "Parotid_L",
    "Esophagus": "Esophagus", "Larynx": "Larynx", "Mandible": "Bone_Mandible", "PTV56": "PTV_5600",
    "PTV63": "PTV_6300", "PTV70": "PTV_7000", "possible_dose_mask": "External",
}


def write_dicom_patient(patient: Patient, folder: str | Path, *, pixel_spacing: float = 0.9766,
                        origin: tuple[float, float, float] = (-250.0, -180.0, 120.0),
                        extra_rois: dict[str, str] | None = None) -> Grid:
    """Write ``patient`` as CT slices (``CT_*.dcm``) and ``RS.dcm`` into ``folder`` (all files at once).

    Args:
        pixel_spacing: the CT's pixel (mm); it covers the patient's field of view, slices stay the patient's.
        origin: LPS position of the patient's voxel (0, 0, 0).
        extra_rois: more ROIs, name -> the structure whose mask they copy (e.g. {"CTV_7000": "PTV70"}).

    Returns:
        The patient's own grid in LPS (``dosepred.io.clinic.patient_grid``), to compare what is read back with.
    """
    from scipy import ndimage

    grid = patient_grid(np.asarray(origin, dtype=float), patient.spacing, patient.shape)
    s0, s1, s2 = patient.spacing
    rows, columns = round(patient.shape[0] * s0 / pixel_spacing), round(patient.shape[1] * s1 / pixel_spacing)
    first = np.asarray(origin) + [pixel_spacing / 2 - s1 / 2, pixel_spacing / 2 - s0 / 2, -s2 * (patient.shape[2] - 1)]
    uids = _uids()
    rr, cc = np.meshgrid(np.arange(rows), np.arange(columns), indexing="ij")
    # Patient index of each CT pixel centre: i along posterior (rows), j along left (columns).
    i = (first[1] + rr * pixel_spacing - origin[1]) / s0
    j = (first[0] + cc * pixel_spacing - origin[0]) / s1
    with atomic_folder(folder) as tmp:
        for n in range(patient.shape[2]):  # CT order: increasing z, so patient slice k = last - n
            k = patient.shape[2] - 1 - n
            hu = ndimage.map_coordinates(patient.ct[:, :, k], [i, j], order=1, mode="nearest")
            position = (float(first[0]), float(first[1]), float(first[2] + n * s2))
            _ct_slice(uids, n, position, pixel_spacing, s2, np.round(hu).astype(np.int16)).save_as(
                tmp / f"CT_{n:04d}.dcm", enforce_file_format=True)
        masks = {TG263_NAMES[name]: mask for name, mask in patient.structures.items()}
        masks[TG263_NAMES["possible_dose_mask"]] = patient.possible_dose_mask
        for name, structure in (extra_rois or {}).items():
            masks[name] = patient.structures[structure]
        _structure_set(uids, masks, grid).save_as(tmp / "RS.dcm", enforce_file_format=True)
    return grid


def _corners(points: np.ndarray) -> np.ndarray:
    """A closed polygon without the points that lie on a straight line between their neighbours."""
    before, after = points - np.roll(points, 1, axis=0), np.roll(points, -1, axis=0) - points
    turns = np.abs(before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]) > 1e-9
    return points[turns] if turns.sum() >= 3 else points


def _uids() -> dict[str, str]:
    from pydicom.uid import generate_uid

    return {key: generate_uid() for key in ("study", "series", "frame", "rs_series", "rs")}


def _common(ds, uids: dict[str, str], sop_class: str, sop_instance: str) -> None:
    """Patient, study, frame of reference, equipment and SOP attributes shared by the CT and the RTSTRUCT."""
    today = datetime.date.today().strftime("%Y%m%d")
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_instance
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Anonymous^", "OpenKBP-export", "", "O"
    ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime, ds.StudyID = uids["study"], today, "120000", "1"
    ds.AccessionNumber, ds.ReferringPhysicianName = "", ""
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = uids["frame"], ""
    ds.Manufacturer = "dosepred (test data from OpenKBP)"


def _dataset(sop_class: str, sop_instance: str):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, sop_instance
    # Implicit VR for the structure set: an explicit-VR DS value (a long contour) cannot pass 64 KiB.
    meta.TransferSyntaxUID = ImplicitVRLittleEndian if sop_class == RT_STRUCTURE_SET_STORAGE else ExplicitVRLittleEndian
    return FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)


def _ct_slice(uids: dict[str, str], number: int, position: tuple[float, float, float], pixel: float,
              thickness: float, hu: np.ndarray):
    from pydicom.uid import generate_uid

    uid = generate_uid()
    ds = _dataset(CT_IMAGE_STORAGE, uid)
    _common(ds, uids, CT_IMAGE_STORAGE, uid)
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = "CT", uids["series"], 1, number + 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImagePositionPatient, ds.ImageOrientationPatient = list(position), [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing, ds.SliceThickness = [pixel, pixel], thickness
    ds.Rows, ds.Columns = hu.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
    ds.KVP, ds.AcquisitionNumber = "", ""
    ds.PixelData = hu.tobytes()
    return ds


def _structure_set(uids: dict[str, str], masks: dict[str, np.ndarray], grid: Grid):
    import contourpy
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = _dataset(RT_STRUCTURE_SET_STORAGE, uids["rs"])
    _common(ds, uids, RT_STRUCTURE_SET_STORAGE, uids["rs"])
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = "RTSTRUCT", uids["rs_series"], 2, 1
    ds.StructureSetLabel = "OpenKBP"
    ds.StructureSetDate, ds.StructureSetTime = datetime.date.today().strftime("%Y%m%d"), "120000"
    series = Dataset()
    series.SeriesInstanceUID = uids["series"]
    study = Dataset()
    study.ReferencedSOPClassUID, study.ReferencedSOPInstanceUID = "1.2.840.10008.3.1.2.3.1", uids["study"]
    study.RTReferencedSeriesSequence = Sequence([series])
    frame = Dataset()
    frame.FrameOfReferenceUID, frame.RTReferencedStudySequence = uids["frame"], Sequence([study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame])
    rois, contours, observations = [], [], []
    for number, (name, mask) in enumerate(masks.items(), start=1):
        roi = Dataset()
        roi.ROINumber, roi.ReferencedFrameOfReferenceUID, roi.ROIName = number, uids["frame"], name
        roi.ROIGenerationAlgorithm = "MANUAL"
        rois.append(roi)
        items = []
        for k in range(mask.shape[2]):
            if not mask[:, :, k].any():
                continue
            # Upsampled 4x (and padded, so lines close at the grid's edge), the 0.5 contour follows the voxels'
            # edges to 1/8 voxel instead of cutting each corner by half a voxel.
            plane = np.pad(mask[:, :, k].repeat(_UP, 0).repeat(_UP, 1), 1).astype(np.float64)
            for line in contourpy.contour_generator(z=plane, line_type=contourpy.LineType.Separate).lines(0.5):
                ji = _corners((line[:-1] - 1 + 0.5) / _UP - 0.5)
                index = np.column_stack([ji[:, 0], ji[:, 1], np.full(len(ji), k)])  # (j, i, k)
                item = Dataset()
                item.ContourGeometricType, item.NumberOfContourPoints = "CLOSED_PLANAR", len(index)
                item.ContourData = [round(float(v), 3) for v in grid.to_lps(index).ravel()]
                items.append(item)
        contour = Dataset()
        contour.ReferencedROINumber, contour.ROIDisplayColor = number, [255, 0, 0]
        contour.ContourSequence = Sequence(items)
        contours.append(contour)
        observation = Dataset()
        observation.ObservationNumber, observation.ReferencedROINumber = number, number
        observation.RTROIInterpretedType = "EXTERNAL" if name == "External" else "PTV" if name.startswith("PTV") else "ORGAN"
        observation.ROIInterpreter = ""
        observations.append(observation)
    ds.StructureSetROISequence, ds.ROIContourSequence = Sequence(rois), Sequence(contours)
    ds.RTROIObservationsSequence = Sequence(observations)
    return ds
