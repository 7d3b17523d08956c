"""A clinic's CT grid and the models' working grid: where one sits in the other, and resampling between them.

A clinic CT has its own spacing (e.g. 0.98 x 0.98 x 2.5 mm on 512 x 512 slices), orientation and origin in
DICOM patient coordinates (LPS, mm). The models work on OpenKBP's grid: 128^3 voxels, axes posterior, left,
inferior (``dosepred.io.patient``). The rule that places the working grid is the one OpenKBP's grids were
made by, so a clinic patient looks to a model as its training patients did:

* spacing (``working_spacing``): in plane the CT's field of view over 128 voxels (OpenKBP: 512-pixel CTs
  at a quarter of their resolution), along the slices the CT's own slice spacing, each kept inside the
  range of OpenKBP's training split (2.73 to 5.08 mm in plane, 1.5 to 3.3 mm between slices);
* position: centred on the CT (so in plane the grid is the CT's field of view, as in OpenKBP), then moved
  along an axis as little as it takes to hold every mapped structure, or if they span more than the grid,
  the targets; targets that do not fit the grid are an error, as the dose around them could not be
  predicted. (A CT written from an OpenKBP patient is read back onto that patient's own grid.)

The predicted dose goes back onto the CT grid by linear interpolation; outside the working grid (far from
every structure) and outside the body it is 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from dosepred.io.errors import PatientDataError
from dosepred.io.patient import GRID_SHAPE, Patient

if TYPE_CHECKING:
    import SimpleITK as sitk

#: The voxel sizes of OpenKBP's training split (mm): in plane, and between slices.
IN_PLANE_RANGE_MM = (2.734, 5.078)
SLICE_RANGE_MM = (1.5, 3.3)


@dataclass(frozen=True)
class Grid:
    """A regular grid in LPS: voxel index (x, y, z) sits at ``origin + direction @ (spacing * index)``.

    ``direction`` holds the unit vectors of the index axes as columns (row-major, 9 numbers), as in
    SimpleITK; arrays on the grid are indexed ``[z, y, x]``.
    """

    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    direction: tuple[float, ...]
    size: tuple[int, int, int]

    @property
    def matrix(self) -> np.ndarray:
        """Index (x, y, z) -> LPS: the 4x4 affine."""
        affine = np.eye(4)
        affine[:3, :3] = np.reshape(self.direction, (3, 3)) * np.asarray(self.spacing)
        affine[:3, 3] = self.origin
        return affine

    def to_lps(self, index: np.ndarray) -> np.ndarray:
        """Points (N, 3) in index space (x, y, z) -> LPS mm."""
        return np.asarray(index, dtype=float) @ self.matrix[:3, :3].T + self.matrix[:3, 3]

    def to_index(self, points: np.ndarray) -> np.ndarray:
        """Points (N, 3) in LPS mm -> continuous index (x, y, z)."""
        inverse = np.linalg.inv(self.matrix)
        return np.asarray(points, dtype=float) @ inverse[:3, :3].T + inverse[:3, 3]

    def image(self, array: np.ndarray) -> sitk.Image:
        """A SimpleITK image of ``array`` (indexed [z, y, x]) on this grid."""
        import SimpleITK as sitk

        image = sitk.GetImageFromArray(np.ascontiguousarray(array))
        image.SetOrigin(self.origin)
        image.SetSpacing(self.spacing)
        image.SetDirection(self.direction)
        return image


def patient_grid(origin: np.ndarray, spacing: tuple[float, float, float],
                 shape: tuple[int, int, int] = GRID_SHAPE) -> Grid:
    """The grid of a patient's arrays (axes posterior, left, inferior; ``spacing`` along them) when voxel
    (0, 0, 0) sits at ``origin`` (LPS). Its index (x, y, z) is array axes (1, 0, 2): towards the patient's left,
    posterior and inferior; ``from_patient_axes`` puts an array in its [z, y, x] order."""
    s_posterior, s_left, s_inferior = spacing
    return Grid(tuple(float(v) for v in origin), (float(s_left), float(s_posterior), float(s_inferior)),  # type: ignore[arg-type]
                (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0), (shape[1], shape[0], shape[2]))


def own_frame_grid(patient: Patient) -> Grid:
    """Where an OpenKBP patient (no DICOM frame) sits in dosepred's own frame: voxel (0, 0, 0) at the origin."""
    return patient_grid(np.zeros(3), patient.spacing, patient.shape)


def working_spacing(ct: Grid) -> tuple[float, float, float]:
    """The working voxel (mm, along posterior, left, inferior) for a CT (see the module docstring)."""
    field_of_view = max(ct.size[0] * ct.spacing[0], ct.size[1] * ct.spacing[1])
    in_plane = round(float(np.clip(field_of_view / GRID_SHAPE[0], *IN_PLANE_RANGE_MM)), 3)
    between_slices = round(float(np.clip(ct.spacing[2], *SLICE_RANGE_MM)), 3)
    return in_plane, in_plane, between_slices


def working_grid(centre_lps: np.ndarray, spacing: tuple[float, float, float]) -> Grid:
    """The models' 128^3 grid (``patient_grid``) centred on a point (LPS)."""
    grid = patient_grid(np.zeros(3), spacing)
    middle = grid.to_lps(((np.asarray(grid.size) - 1) / 2)[None])[0]
    return patient_grid(np.asarray(centre_lps, dtype=float) - middle, spacing)


def to_patient_axes(array_zyx: np.ndarray) -> np.ndarray:
    """An array on a ``patient_grid`` in its [z, y, x] order -> the patient's [posterior, left, inferior]."""
    return np.ascontiguousarray(np.transpose(array_zyx, (1, 2, 0)))


def from_patient_axes(array: np.ndarray) -> np.ndarray:
    """Inverse of ``to_patient_axes``."""
    return np.ascontiguousarray(np.transpose(array, (2, 0, 1)))


def box_lps(mask_zyx: np.ndarray, grid: Grid) -> tuple[np.ndarray, np.ndarray] | None:
    """The LPS bounding box (low, high corners) of a mask's voxel centres, or None when it is empty."""
    where = np.argwhere(mask_zyx)
    if where.size == 0:
        return None
    return _index_box_lps(where.min(0)[::-1], where.max(0)[::-1], grid)


def _index_box_lps(low: np.ndarray, high: np.ndarray, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """The LPS bounding box of the index box from ``low`` to ``high`` ((x, y, z), inclusive)."""
    corners = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], dtype=float)
    points = grid.to_lps(low + corners * (np.asarray(high) - low))
    return points.min(0), points.max(0)


def place(grid: Grid, structures: np.ndarray, targets: np.ndarray, where: str) -> Grid:
    """The working grid for a patient on CT ``grid`` (see the module docstring); masks are on it ([z, y, x])."""
    spacing = working_spacing(grid)
    reach = (np.asarray(GRID_SHAPE) - 1)[[1, 0, 2]] * np.asarray(spacing)[[1, 0, 2]] / 2  # centre to last voxel, L P S
    target_box = box_lps(targets, grid)
    if target_box is None:
        raise PatientDataError(where, "no target (PTV) to predict a dose for")
    structure_box = box_lps(structures, grid) or target_box
    centre = np.mean(_index_box_lps(np.zeros(3), np.asarray(grid.size) - 1, grid), axis=0)
    for axis in range(3):
        for low, high in ((structure_box[0][axis], structure_box[1][axis]), (target_box[0][axis], target_box[1][axis])):
            if high - low <= 2 * reach[axis]:
                centre[axis] = np.clip(centre[axis], high - reach[axis], low + reach[axis])
                break
        else:
            raise PatientDataError(where, f"the targets span {high - low:.0f} mm {('left-right', 'front-back', 'head-foot')[axis]}"
                                   f", more than the model's {2 * reach[axis]:.0f} mm grid")
    return working_grid(centre, spacing)


def resample(array_zyx: np.ndarray, source: Grid, target: Grid, *, linear: bool, default: float) -> np.ndarray:
    """``array_zyx`` on ``source`` resampled onto ``target`` (float32; ``default`` outside ``source``)."""
    import SimpleITK as sitk

    moving = source.image(np.asarray(array_zyx, dtype=np.float32))
    reference = target.image(np.zeros(target.size[::-1], dtype=np.uint8))
    interpolator = sitk.sitkLinear if linear else sitk.sitkNearestNeighbor
    result = sitk.Resample(moving, reference, sitk.Transform(), interpolator, float(default), sitk.sitkFloat32)
    return sitk.GetArrayFromImage(result)
