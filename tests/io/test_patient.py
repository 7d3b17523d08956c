from __future__ import annotations

import numpy as np
import pytest

from dosepred.io.errors import PatientDataError
from dosepred.io.patient import MAX_GRID_EDGE, MAX_VOXELS, Patient, check_grid, check_patient_id


@pytest.mark.parametrize("good", ["pt_201", "pt 201", "A.b+c-d_1", "7", "x" * 128])
def test_safe_ids_are_kept(good: str) -> None:
    assert check_patient_id(good, "here") == good


@pytest.mark.parametrize("bad", ["../victim", "..", ".", ".hidden", "a/b", "a\\b", "/etc", "a\x00b", "", " lead",
                                 "trail.", "trail ", "-option", "x" * 129, "pt\n1", 7, None])
def test_unsafe_ids_are_refused(bad: object) -> None:
    with pytest.raises(PatientDataError, match="patient id must be") as caught:
        check_patient_id(bad, "pt.dpk")
    assert caught.value.where == "pt.dpk"


def test_every_patient_checks_its_id(phantom_small) -> None:
    with pytest.raises(PatientDataError, match="patient id"):
        Patient(id="../victim", ct=phantom_small.ct, structures={}, possible_dose_mask=phantom_small.possible_dose_mask,
                spacing=phantom_small.spacing)


@pytest.mark.parametrize("shape", [(128, 128, 128), [1, 1, 1], (np.int64(MAX_GRID_EDGE), 256, 256)])
def test_grids_within_the_bounds(shape) -> None:
    assert check_grid(shape, "here") == tuple(int(n) for n in shape)


@pytest.mark.parametrize("shape", [(4096, 4096, 4096), (MAX_GRID_EDGE + 1, 1, 1), (MAX_GRID_EDGE,) * 3, (0, 128, 128),
                                   (-1, 128, 128), (128, 128), (128, 128, 128, 1), (128.0, 128, 128), ("128", 128, 128),
                                   (True, 128, 128), None, "128x128x128", (2**70, 2**70, 2**70)])
def test_grids_outside_the_bounds(shape) -> None:
    assert MAX_GRID_EDGE**3 > MAX_VOXELS  # so the cube of edges is refused by the voxel count
    with pytest.raises(PatientDataError, match="grid"):
        check_grid(shape, "here")


@pytest.mark.parametrize("spacing", [["a", {}, None], [10**400, 1, 1]])  # the second overflows a float
def test_spacing_that_is_not_numbers(phantom_small, spacing: list) -> None:
    with pytest.raises(PatientDataError, match="voxel spacing must be 3 positive finite numbers"):
        Patient(id="p", ct=phantom_small.ct, structures={}, possible_dose_mask=phantom_small.possible_dose_mask,
                spacing=spacing)
