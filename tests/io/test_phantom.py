from __future__ import annotations

import numpy as np

from dosepred.io.patient import PRESCRIPTION_GY, ROIS
from dosepred.io.phantom import make_phantom


def test_phantom_is_deterministic_and_complete() -> None:
    a, b = make_phantom(), make_phantom()
    np.testing.assert_array_equal(a.ct, b.ct)
    np.testing.assert_array_equal(a.dose, b.dose)
    assert a.shape == (128, 128, 128)
    assert set(a.structures) == set(ROIS)
    assert not a.dose[~a.possible_dose_mask].any()


def test_phantom_dose_is_plan_like() -> None:
    patient = make_phantom()
    for target, prescription in PRESCRIPTION_GY.items():
        d95 = np.percentile(patient.dose[patient.structures[target]], 5)
        assert 0.95 * prescription <= d95 <= 1.05 * prescription
    # The dose falls off away from the targets: the far brainstem gets much less than the primary.
    assert patient.dose[patient.structures["Brainstem"]].mean() < 0.5 * PRESCRIPTION_GY["PTV70"]
    assert -200 < np.median(patient.ct[patient.possible_dose_mask]) < 200


def test_phantom_keeps_its_anatomy_on_smaller_grids() -> None:
    small = make_phantom((48, 48, 48))
    assert small.spacing[0] == round(4.688 * 128 / 48, 6)
    assert {"PTV70", "PTV63", "PTV56", "LeftParotid", "RightParotid"} <= set(small.structures)
