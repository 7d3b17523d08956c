"""The Patient model: one head-and-neck case on its voxel grid, in physical units (HU, Gy, mm)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dosepred.io.errors import PatientDataError

if TYPE_CHECKING:
    from dosepred.io.dicom_in import ClinicFrame

#: The OpenKBP grid every model of this project works on.
GRID_SHAPE: tuple[int, int, int] = (128, 128, 128)
#: Organs at risk and targets, in the canonical (OpenKBP) channel order.
OARS: tuple[str, ...] = ("Brainstem", "SpinalCord", "RightParotid", "LeftParotid", "Esophagus", "Larynx", "Mandible")
TARGETS: tuple[str, ...] = ("PTV56", "PTV63", "PTV70")
ROIS: tuple[str, ...] = OARS + TARGETS
#: Prescription dose of each target (Gy): the number in its name.
PRESCRIPTION_GY: dict[str, float] = {"PTV56": 56.0, "PTV63": 63.0, "PTV70": 70.0}
#: OpenKBP CT files store HU + 1000, so air (-1000 HU) is 0 and absent from the sparse file.
CT_FILE_OFFSET = 1000.0
AIR_HU = -1000.0
#: Bounds on any grid read from a file, checked before allocating: a header cannot make a reader take
#: all the memory. 2**26 voxels (256 MiB as float32) is 32 times OpenKBP's grid.
MAX_GRID_EDGE = 512
MAX_VOXELS = 2**26
#: A patient id names output files and folders: letters, digits and ``._+ -``, starting with a letter
#: or digit (so never '.', '..' or hidden), ending with neither '.' nor a space, at most 128 characters.
PATIENT_ID = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._+ -]{0,126}[A-Za-z0-9_+-])?")


@dataclass(eq=False)
class Patient:
    """One case. Arrays share one 3D shape, indexed (axis0, axis1, axis2) as in the OpenKBP files.

    Axis 0 runs anterior to posterior, axis 1 from the patient's right to left, axis 2 superior to
    inferior (see ``dosepred.io.nifti`` for the world frame). A ROI missing from ``structures`` was
    not contoured; an empty mask is dropped, as it means the same.

    Attributes:
        id: patient identifier, e.g. ``pt_201``.
        ct: CT in Hounsfield units (float32).
        structures: ROI name -> boolean mask, only for contoured ROIs.
        possible_dose_mask: voxels where dose may be deposited (bool).
        spacing: voxel size in mm along axes 0, 1, 2.
        dose: reference dose in Gy (float32), None when unknown (a patient to predict).
        clinic: for a patient read from a clinic's DICOM, where this grid sits in its CT (None otherwise).
    """

    id: str
    ct: np.ndarray
    structures: dict[str, np.ndarray]
    possible_dose_mask: np.ndarray
    spacing: tuple[float, float, float]
    dose: np.ndarray | None = None
    source: str = field(default="", repr=False)
    clinic: ClinicFrame | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        check_patient_id(self.id, self.source or "patient")
        where = self.source or self.id
        self.ct = np.asarray(self.ct, dtype=np.float32)
        check_grid(self.ct.shape, where)
        if not np.isfinite(self.ct).all():
            raise PatientDataError(where, "CT contains NaN or infinite values")
        self.possible_dose_mask = self._as_mask("possible_dose_mask", self.possible_dose_mask, where)
        unknown = set(self.structures) - set(ROIS)
        if unknown:
            raise PatientDataError(where, f"unknown structure(s) {sorted(unknown)}; known: {', '.join(ROIS)}")
        masks = {roi: self._as_mask(roi, self.structures[roi], where) for roi in ROIS if roi in self.structures}
        self.structures = {roi: mask for roi, mask in masks.items() if mask.any()}
        try:
            spacing = tuple(float(s) for s in np.asarray(self.spacing, dtype=float).ravel())
        except (TypeError, ValueError, OverflowError):
            spacing = ()
        if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
            raise PatientDataError(where, "voxel spacing must be 3 positive finite numbers (mm)"
                                   + (f", got {spacing}" if len(spacing) == 3 else ""))
        self.spacing = spacing  # type: ignore[assignment]
        if self.dose is not None:
            self.dose = np.asarray(self.dose, dtype=np.float32)
            self._check_shape("dose", self.dose, where)
            check_dose(self.dose, where)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.ct.shape  # type: ignore[return-value]

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing))

    def structure_stack(self) -> np.ndarray:
        """All 10 ROI masks as a (10, *shape) bool array in ``ROIS`` order; missing ROIs are empty."""
        stack = np.zeros((len(ROIS), *self.shape), dtype=bool)
        for channel, roi in enumerate(ROIS):
            if roi in self.structures:
                stack[channel] = self.structures[roi]
        return stack

    def _check_shape(self, name: str, array: np.ndarray, where: str) -> None:
        if array.shape != self.ct.shape:
            raise PatientDataError(where, f"{name} has shape {array.shape}, but the CT has {self.ct.shape}")

    def _as_mask(self, name: str, array: np.ndarray, where: str) -> np.ndarray:
        array = np.asarray(array)
        self._check_shape(name, array, where)
        return binary_mask(name, array, where)


def check_patient_id(text: object, where: str | Path) -> str:
    """Return ``text`` if it is a safe patient id (see ``PATIENT_ID``): ids come from files, and become file names."""
    if not isinstance(text, str) or PATIENT_ID.fullmatch(text) is None:
        raise PatientDataError(where, "the patient id must be 1 to 128 letters, digits, '.', '_', '+', '-' or spaces, "
                               "starting with a letter or digit and not ending with '.' or a space (it names files)")
    return text


def check_grid(shape: object, where: str | Path) -> tuple[int, int, int]:
    """Return ``shape`` as 3 ints if it is a grid this project can hold (``MAX_GRID_EDGE``, ``MAX_VOXELS``)."""
    if not (isinstance(shape, (tuple, list)) and len(shape) == 3
            and all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) for n in shape)):
        raise PatientDataError(where, "the grid must be 3 whole numbers of voxels (a 3D volume)")
    grid = (int(shape[0]), int(shape[1]), int(shape[2]))
    if not all(0 < n <= MAX_GRID_EDGE for n in grid) or math.prod(grid) > MAX_VOXELS:
        raise PatientDataError(where, f"grid {'x'.join(map(str, grid))} is outside what can be read: 1 to "
                               f"{MAX_GRID_EDGE} voxels per axis and at most {MAX_VOXELS} voxels in all")
    return grid


def check_dose(dose: np.ndarray, where: str | Path) -> None:
    """Raise unless every dose value is finite and non-negative."""
    if not np.isfinite(dose).all():
        raise PatientDataError(where, "dose contains NaN or infinite values")
    if (dose < 0).any():
        raise PatientDataError(where, f"negative dose values (min {dose.min():.4g} Gy)")


def require_grid(patient: Patient, shape: tuple[int, int, int] = GRID_SHAPE) -> None:
    """Raise a clear error when a patient's grid is not the one a model expects."""
    if patient.shape != tuple(shape):
        raise PatientDataError(
            patient.source or patient.id,
            f"grid {'x'.join(map(str, patient.shape))} differs from the {'x'.join(map(str, shape))} grid the model "
            "expects; resample the patient onto that grid first (OpenKBP: 128^3 voxels covering the head and neck)",
        )


def require_target(patient: Patient) -> None:
    """Raise a clear error when a patient has no target: a model would plan its dose around nothing."""
    if not any(patient.structures.get(target) is not None and patient.structures[target].any() for target in TARGETS):
        raise PatientDataError(
            patient.source or patient.id,
            f"no target: none of {', '.join(TARGETS)} is contoured, and a predicted dose is planned around them "
            "(a target under another name: name it PTV56, PTV63 or PTV70; DICOM: --ptv NAME=GY or --roi-names)",
        )


def binary_mask(name: str, array: np.ndarray, where: str | Path) -> np.ndarray:
    """``array`` as a bool mask, refused unless it holds only 0 and 1."""
    if array.dtype != bool:
        if not ((array == 0) | (array == 1)).all():
            raise PatientDataError(where, f"{name} mask must hold only 0 and 1")
        array = array.astype(bool)
    return array
