"""A clinic's patient from DICOM: one CT series and its RTSTRUCT, onto the models' working grid.

Libraries: pydicom reads the headers and the structure set; SimpleITK (GDCM) reads the CT pixels, which
may be compressed; contours become masks with matplotlib's ``Path`` (point-in-polygon at voxel centres,
even-odd, so a contour inside another on the same slice cuts a hole). rt-utils would need OpenCV's GUI
build (and a libGL), dicompyler-core does not run on pydicom 3, platipy pulls a large stack: the
rasterisation they would do is ~20 lines here.

Nothing read from the files is trusted as a path, size or name: sizes are checked before pixels are read,
the patient id is the folder's name, ROI names only pick structures (``dosepred.io.roi_names``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dosepred.io import clinic
from dosepred.io.clinic import Grid
from dosepred.io.errors import PatientDataError
from dosepred.io.patient import AIR_HU, TARGETS, Patient, check_patient_id
from dosepred.io.roi_names import BODY, RoiMapping, RoiNames, map_rois, warn_unmapped

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
#: Limits checked from the headers before any pixel is read.
MAX_FILES = 4000
MAX_FILE_BYTES = 256 * 2**20
MAX_CT_EDGE = 1024
MAX_CT_VOXELS = 2**28
#: A slice further than this (mm) from its place in one evenly spaced stack along the slices' normal is refused:
#: the volume would be distorted, and an RT Dose's frames (which step along the normal) would drift from the CT's.
SLICE_POSITION_TOLERANCE_MM = 0.1
#: CT values above this (HU) are the patient when no body contour is given: fat is ~ -100 HU, lung ~ -800.
BODY_THRESHOLD_HU = -350.0
#: Identifying attributes an RT Dose copies from the CT (patient, study, frame of reference).
COPIED_ATTRIBUTES = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                     "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName", "FrameOfReferenceUID",
                     "PositionReferenceIndicator")


@dataclass
class ClinicFrame:
    """Where a working-grid patient sits in its clinic CT, and what an RT Dose must copy from the CT."""

    ct_grid: Grid
    working_grid: Grid
    body: np.ndarray  # on the CT grid, [z, y, x]
    attributes: dict[str, str]  # COPIED_ATTRIBUTES that the CT has
    mapping: RoiMapping
    body_source: str  # the body ROI's name(s), or how the body was found without one

    def dose_on_ct(self, dose: np.ndarray) -> np.ndarray:
        """A dose on the working grid (models' axes) -> on the CT grid [z, y, x], 0 outside the body."""
        on_ct = clinic.resample(clinic.from_patient_axes(dose), self.working_grid, self.ct_grid, linear=True, default=0.0)
        return np.where(self.body, np.maximum(on_ct, 0.0), 0.0).astype(np.float32)


def is_dicom_folder(folder: Path) -> bool:
    """A folder holding DICOM files directly (the 'DICM' marker after the 128-byte preamble)."""
    if not folder.is_dir():
        return False
    return any(_is_dicom_file(path) for path in _files(folder)[:64])


def read_dicom_patient(folder: str | Path, names: RoiNames | None = None) -> Patient:
    """Read one patient folder (a CT series and its RTSTRUCT) onto the working grid.

    The returned patient's ``clinic`` frame brings a predicted dose back onto the CT (``dose_on_ct``).
    ROIs that map to no structure are listed in an ``UnmappedRoiWarning``.
    """
    import pydicom

    folder = Path(folder)
    check_patient_id(folder.name, folder)
    names = names or RoiNames.load()
    headers = _read_headers(folder)
    structure_sets = [(path, ds) for path, ds in headers if ds.get("SOPClassUID") == RT_STRUCTURE_SET_STORAGE]
    if len(structure_sets) != 1:
        raise PatientDataError(folder, "no RTSTRUCT file" if not structure_sets else
                               f"{len(structure_sets)} RTSTRUCT files: keep the one to predict with in each patient folder")
    try:
        structure_set = pydicom.dcmread(structure_sets[0][0])
    except Exception as error:  # pydicom raises many types on a damaged file
        raise PatientDataError(structure_sets[0][0], f"cannot read the RTSTRUCT ({type(error).__name__})") from None
    slices = _ct_series(folder, headers, structure_set)
    grid = _check_geometry(folder, slices)
    _check_pixels_and_frame(folder, slices)
    frame_uid = str(slices[0][1].FrameOfReferenceUID)
    referenced = {str(item.get("FrameOfReferenceUID", "")) for item in structure_set.get("ReferencedFrameOfReferenceSequence", [])}
    if referenced and frame_uid not in referenced:
        raise PatientDataError(folder, "the RTSTRUCT was drawn on another frame of reference than the CT")
    ct = _read_ct(folder, [path for path, _ in slices])

    rois = _contours(structure_set, folder, frame_uid)
    mapping = map_rois(list(dict.fromkeys(name for name, _ in rois)), names, folder)
    masks: dict[str, np.ndarray] = {}
    for structure, roi_names in mapping.structures.items():  # one mask a structure: memory does not grow with ROIs
        masks[structure] = np.zeros(tuple(reversed(grid.size)), dtype=bool)
        for name, polygons in rois:
            if name in roi_names and polygons:
                _rasterise(polygons, grid, masks[structure])
    if not any(target in masks and masks[target].any() for target in TARGETS):
        raise PatientDataError(folder, "no usable target: no ROI maps to a PTV (name it like PTV70 or PTV_7000, "
                               "or give its prescription: --ptv NAME=GY)")
    body, body_source = masks.pop(BODY, None), ", ".join(mapping.structures.get(BODY, []))
    if body is None or not body.any():
        body, body_source = _body_from_ct(ct), f"CT above {BODY_THRESHOLD_HU:.0f} HU (no body ROI)"
    mapped = np.logical_or.reduce(list(masks.values()))
    targets = np.logical_or.reduce([masks[t] for t in TARGETS if t in masks])
    working = clinic.place(grid, mapped, targets, str(folder))

    def onto_working(array: np.ndarray, *, mask: bool) -> np.ndarray:
        values = clinic.resample(array, grid, working, linear=True, default=0.0 if mask else AIR_HU)
        return clinic.to_patient_axes(values >= 0.5 if mask else values)

    attributes = {key: str(slices[0][1].get(key, "")) for key in COPIED_ATTRIBUTES}
    frame = ClinicFrame(grid, working, body, attributes, mapping, body_source)
    return Patient(
        id=folder.name,
        ct=onto_working(ct, mask=False),
        structures={structure: onto_working(mask, mask=True) for structure, mask in masks.items()},
        possible_dose_mask=onto_working(body, mask=True),
        spacing=clinic.working_spacing(grid),
        source=str(folder),
        clinic=frame,
    )


# --- files and headers -----------------------------------------------------------------------------
def _files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir()
                  if not path.name.startswith(".") and path.is_file() and not path.is_symlink())


def _is_dicom_file(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _read_headers(folder: Path) -> list[tuple[Path, object]]:
    import pydicom

    files = [path for path in _files(folder) if _is_dicom_file(path)]
    if len(files) > MAX_FILES:
        raise PatientDataError(folder, f"{len(files)} DICOM files, more than the {MAX_FILES} one patient may have")
    headers = []
    for path in files:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise PatientDataError(path, f"larger than {MAX_FILE_BYTES // 2**20} MiB: not a CT slice or a structure set")
        try:
            headers.append((path, pydicom.dcmread(path, stop_before_pixels=True)))
        except Exception as error:  # pydicom raises many types on a damaged file
            raise PatientDataError(path, f"cannot read DICOM header ({type(error).__name__})") from None
    return headers


def _ct_series(folder: Path, headers: list, structure_set) -> list[tuple[Path, object]]:
    """The CT slices the structure set refers to (or the only CT series), sorted along the slice normal."""
    series: dict[str, list] = {}
    for path, ds in headers:
        if ds.get("SOPClassUID") == CT_IMAGE_STORAGE and "LOCALIZER" not in ds.get("ImageType", []):  # not scouts
            series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((path, ds))
    referenced = {str(s.get("SeriesInstanceUID", "")) for f in structure_set.get("ReferencedFrameOfReferenceSequence", [])
                  for st in f.get("RTReferencedStudySequence", []) for s in st.get("RTReferencedSeriesSequence", [])}
    chosen = [uid for uid in series if uid in referenced] or (list(series) if len(series) == 1 else [])
    if not chosen:
        raise PatientDataError(folder, "no CT series" if not series else
                               f"{len(series)} CT series and the RTSTRUCT names none of them: keep one per patient folder")
    slices = series[chosen[0]]
    try:
        orientation = np.asarray(slices[0][1].ImageOrientationPatient, dtype=float)
        positions = [np.asarray(ds.ImagePositionPatient, dtype=float) for _, ds in slices]
        if orientation.shape != (6,) or any(position.shape != (3,) for position in positions):
            raise ValueError
    except (AttributeError, ValueError, TypeError):
        raise PatientDataError(folder, "CT slices without a valid position (3 numbers) or orientation (6)") from None
    along = np.array(positions) @ np.cross(orientation[:3], orientation[3:])
    return [slices[i] for i in np.argsort(along, kind="stable")]


def _check_geometry(folder: Path, slices: list) -> Grid:
    """The CT's grid from its headers, refused unless it is one regular, bounded volume."""
    first = slices[0][1]
    try:
        rows, columns = int(first.Rows), int(first.Columns)
        orientation = np.asarray(first.ImageOrientationPatient, dtype=float)
        pixel = np.asarray(first.PixelSpacing, dtype=float)  # (between rows, between columns)
        positions = np.array([np.asarray(ds.ImagePositionPatient, dtype=float) for _, ds in slices])
        same = pixel.shape == (2,) and all(
            int(ds.Rows) == rows and int(ds.Columns) == columns
            and np.allclose(np.asarray(ds.ImageOrientationPatient, dtype=float), orientation, atol=1e-4)
            and np.allclose(np.asarray(ds.PixelSpacing, dtype=float), pixel, rtol=0, atol=1e-4) for _, ds in slices)
    except (AttributeError, ValueError, TypeError):
        raise PatientDataError(folder, "CT slices without valid size, spacing, position or orientation") from None
    if not same:
        raise PatientDataError(folder, "CT slices differ in size, pixel spacing or orientation: not one series")
    x, y = orientation[:3], orientation[3:]
    if not (np.isfinite(positions).all() and np.isfinite(orientation).all()
            and np.allclose([x @ x, y @ y, x @ y], [1, 1, 0], atol=2e-3)):
        raise PatientDataError(folder, "the CT's positions or orientation are not finite, or its rows and columns "
                               "are not unit vectors at right angles")
    if not (0 < rows <= MAX_CT_EDGE and 0 < columns <= MAX_CT_EDGE and len(slices) <= MAX_CT_EDGE
            and rows * columns * len(slices) <= MAX_CT_VOXELS):
        raise PatientDataError(folder, f"CT of {columns} x {rows} x {len(slices)} voxels is outside what can be read "
                               f"(at most {MAX_CT_EDGE} per axis)")
    if len(slices) < 2:
        raise PatientDataError(folder, "the CT series has fewer than 2 slices")
    if not (np.isfinite(pixel).all() and pixel.min() > 0):
        raise PatientDataError(folder, f"the CT's pixel spacing {pixel.tolist()} is not two positive numbers")
    normal = np.cross(x, y)
    step = float((positions[-1] - positions[0]) @ normal) / (len(slices) - 1)
    expected = positions[0] + np.outer(np.arange(len(slices)), step * normal)
    off = float(np.linalg.norm(positions - expected, axis=1).max())
    if step <= SLICE_POSITION_TOLERANCE_MM or off > SLICE_POSITION_TOLERANCE_MM:
        gaps = np.diff((positions - positions[0]) @ normal)
        usual, odd = float(np.median(gaps)), int(np.argmax(np.abs(gaps - np.median(gaps))))
        where = (f"; {slices[odd][0].name} and {slices[odd + 1][0].name} lie {gaps[odd]:.2f} mm apart, most slices "
                 f"{usual:.2f} mm" if abs(gaps[odd] - usual) > SLICE_POSITION_TOLERANCE_MM else "")
        raise PatientDataError(folder, "CT slices are not evenly spaced along their normal (missing, duplicated or "
                               f"unevenly spaced slices, or a tilted gantry): a slice lies {off:.2f} mm from its place "
                               f"in a stack of {len(slices)} at {step:.3f} mm{where}")
    direction = np.stack([x, y, normal], axis=1)
    return Grid(tuple(float(v) for v in positions[0]), (float(pixel[1]), float(pixel[0]), step),
                tuple(float(v) for v in direction.ravel()), (columns, rows, len(slices)))


def _check_pixels_and_frame(folder: Path, slices: list) -> None:
    """Refuse pixels the CT reader would misread and a CT without the frame and study an RT Dose must name."""
    try:
        kinds = {(int(ds.SamplesPerPixel), int(ds.BitsAllocated), str(ds.PhotometricInterpretation)) for _, ds in slices}
        rescales = np.array([[float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))] for _, ds in slices])
    except (AttributeError, ValueError, TypeError):
        raise PatientDataError(folder, "CT slices without a valid pixel description or rescale slope and intercept") from None
    if kinds != {(1, 16, "MONOCHROME2")}:
        raise PatientDataError(folder, "CT pixels must be 16-bit greyscale (one sample, MONOCHROME2), as the CT Image "
                               f"module requires; found {sorted(kinds)}")
    if not (np.isfinite(rescales).all() and (rescales[:, 0] != 0).all()):
        raise PatientDataError(folder, "the CT's rescale slope or intercept is not a finite number (a slope of 0)")
    frames = {str(ds.get("FrameOfReferenceUID", "")) for _, ds in slices}
    if len(frames) != 1 or "" in frames or not str(slices[0][1].get("StudyInstanceUID", "")):
        raise PatientDataError(folder, "the CT slices need one FrameOfReferenceUID and a StudyInstanceUID (the RT "
                               "Dose names both)")


def _read_ct(folder: Path, paths: list[Path]) -> np.ndarray:
    """The CT in HU, [z, y, x], slices in the order given (SimpleITK applies rescale slope and intercept).

    Slice by slice: the geometry is checked from the headers already, and ITK's series reader would print its own
    warning about slice positions the check accepts (within ``SLICE_POSITION_TOLERANCE_MM``).
    """
    import SimpleITK as sitk

    try:
        ct = np.concatenate([sitk.GetArrayFromImage(sitk.ReadImage(str(path))) for path in paths]).astype(np.float32)
    except (RuntimeError, ValueError):
        raise PatientDataError(folder, "cannot read the CT pixels (damaged or unsupported compression)") from None
    if not np.isfinite(ct).all():
        raise PatientDataError(folder, "CT contains NaN or infinite values")
    return ct


# --- contours --------------------------------------------------------------------------------------
def _contours(structure_set, folder: Path, frame_uid: str) -> list[tuple[str, list[np.ndarray]]]:
    """(name, closed planar contours as N x 3 points, LPS mm) of each ROI on the CT's frame of reference.

    ROIs drawn on another frame (a registered MR's, say) are left out with a warning.
    """
    names, elsewhere = {}, []
    for roi in structure_set.get("StructureSetROISequence", []):
        name = str(roi.get("ROIName", "")).strip()
        if str(roi.get("ReferencedFrameOfReferenceUID") or frame_uid) == frame_uid:
            names[_roi_number(roi.get("ROINumber"), folder)] = name
        else:
            elsewhere.append(name)
    warn_unmapped(elsewhere, folder, "their ReferencedFrameOfReferenceUID is not the CT's",
                  why="drawn on another frame of reference than the CT")
    contours = []
    for item in structure_set.get("ROIContourSequence", []):
        name = names.get(_roi_number(item.get("ReferencedROINumber"), folder))
        if not name:
            continue
        polygons: list[np.ndarray] = []
        contours.append((name, polygons))
        for contour in item.get("ContourSequence", []):
            if contour.get("ContourGeometricType", "CLOSED_PLANAR") != "CLOSED_PLANAR":
                continue
            try:
                points = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)
            except (AttributeError, ValueError):
                raise PatientDataError(folder, f"ROI {name!r}: contour data is not a list of 3D points") from None
            if len(points) >= 3 and np.isfinite(points).all():
                polygons.append(points)
    return contours


def _roi_number(value: object, folder: Path) -> int:
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise PatientDataError(folder, "the RTSTRUCT has an ROI without a valid number") from None


def _rasterise(polygons: list[np.ndarray], grid: Grid, mask: np.ndarray) -> None:
    """Add one ROI's closed planar contours to ``mask`` on the CT grid ([z, y, x]).

    Even-odd within a contour plane (an inner contour is a hole); planes between slices go to the nearest, and
    planes that share a slice (an RTSTRUCT drawn on finer slices) are joined, not cut out of each other.
    """
    from matplotlib.path import Path as Polygon

    columns, rows, depth = grid.size
    planes: list[tuple[float, list[np.ndarray]]] = []  # contours within a hundredth of a slice share a plane
    for position, index in sorted(((float(i[:, 2].mean()), i[:, :2]) for i in map(grid.to_index, polygons)),
                                  key=lambda item: item[0]):
        if planes and position - planes[-1][0] < 0.01:
            planes[-1][1].append(index)
        else:
            planes.append((position, [index]))
    for position, plane in planes:
        z = int(round(position))
        if not 0 <= z < depth:
            continue
        inside = np.zeros((rows, columns), dtype=bool)
        for index in plane:
            low = np.clip(np.floor(index.min(0)).astype(int), 0, [columns - 1, rows - 1])
            high = np.clip(np.ceil(index.max(0)).astype(int), 0, [columns - 1, rows - 1])
            xs, ys = np.meshgrid(np.arange(low[0], high[0] + 1), np.arange(low[1], high[1] + 1))
            hit = Polygon(index).contains_points(np.column_stack([xs.ravel(), ys.ravel()]))
            inside[ys.ravel()[hit], xs.ravel()[hit]] ^= True
        mask[z] |= inside


def _body_from_ct(ct: np.ndarray) -> np.ndarray:
    """The patient without a body contour: CT above ``BODY_THRESHOLD_HU``, its largest connected part (not the
    couch), holes (airways) filled slice by slice."""
    from scipy import ndimage

    labels, count = ndimage.label(ct > BODY_THRESHOLD_HU)
    if count == 0:
        return np.zeros(ct.shape, dtype=bool)
    body = labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
    return np.stack([ndimage.binary_fill_holes(plane) for plane in body])

