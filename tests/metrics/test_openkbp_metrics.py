from __future__ import annotations

import math

import numpy as np
import pytest

from dosepred.io.patient import OARS, ROIS
from dosepred.metrics import METRIC_COLUMNS, OpenKBPScorer, dose_error, dvh_curves, dvh_metrics


def straightforward_percentile(values: np.ndarray, q: float) -> float:
    """Linear interpolation between sorted order statistics, written out by hand."""
    ordered = sorted(float(v) for v in values)
    rank = q / 100.0 * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (rank - low) * (ordered[high] - ordered[low])


def straightforward_scores(cases) -> tuple[float, float]:
    """The OpenKBP definitions, one patient, ROI and metric at a time."""
    dose_errors, dvh_differences = [], []
    for reference, prediction, structures, mask, voxel_volume in cases:
        dose_errors.append(math.fsum(np.abs(reference.astype(float) - prediction.astype(float)).ravel().tolist())
                           / int(mask.sum()))
        tenth_cc = max(1, round(100 / voxel_volume))
        for roi, roi_mask in zip(ROIS, structures):
            if not roi_mask.any():
                continue
            for q in ([100 - tenth_cc / roi_mask.sum() * 100, "mean"] if roi in OARS else [1, 5, 99]):
                def metric(dose):
                    values = dose[roi_mask]
                    return math.fsum(values.tolist()) / values.size if q == "mean" else straightforward_percentile(values, q)
                dvh_differences.append(abs(metric(reference) - metric(prediction)))
    return sum(dose_errors) / len(dose_errors), sum(dvh_differences) / len(dvh_differences)


def score(cases) -> tuple[float, float]:
    scorer = OpenKBPScorer()
    for i, (reference, prediction, structures, mask, voxel_volume) in enumerate(cases):
        scorer.add(f"pt_{i}", reference, prediction, structures=structures, possible_dose_mask=mask,
                   voxel_volume_mm3=voxel_volume)
    return scorer.evaluation.dose_score, scorer.evaluation.dvh_score


def case_of(patient, prediction):
    return patient.dose, prediction, patient.structure_stack(), patient.possible_dose_mask, patient.voxel_volume_mm3


def test_perfect_prediction_scores_zero(phantom_small) -> None:
    assert score([case_of(phantom_small, phantom_small.dose.copy())]) == (0.0, 0.0)


def test_constant_offset_inside_mask(phantom_small) -> None:
    offset = 2.5
    prediction = phantom_small.dose + offset * phantom_small.possible_dose_mask
    dose_score, dvh_score = score([case_of(phantom_small, prediction)])
    assert dose_score == pytest.approx(offset, rel=1e-6)
    assert dvh_score == pytest.approx(offset, rel=1e-5)  # every percentile and mean shifts by the offset


def test_dose_outside_the_mask_counts(phantom_small) -> None:
    outside = ~phantom_small.possible_dose_mask
    prediction = phantom_small.dose + 3.0 * outside
    expected = 3.0 * outside.sum() / phantom_small.possible_dose_mask.sum()
    assert dose_error(phantom_small.dose, prediction, phantom_small.possible_dose_mask) == pytest.approx(expected)


def test_d01cc_on_a_hand_made_roi() -> None:
    dose = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    structures = np.zeros((10, 10, 10, 10), dtype=bool)
    structures[0] = True  # Brainstem: every voxel
    metrics = dvh_metrics(dose, structures, voxel_volume_mm3=10.0)  # 0.1 cc = 10 voxels
    column = dict(zip(METRIC_COLUMNS, metrics))
    assert column["D_0.1_cc", "Brainstem"] == pytest.approx(np.percentile(np.arange(1000), 99.0))
    assert column["mean", "Brainstem"] == pytest.approx(499.5)
    assert np.isnan(column["mean", "SpinalCord"])  # not contoured


def test_an_organ_smaller_than_a_tenth_of_a_cc_gets_its_coldest_dose_as_d01cc() -> None:
    dose = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    structures = np.zeros((10, 10, 10, 10), dtype=bool)
    structures[0, 0, 0, 3:6] = True  # Brainstem: 3 voxels of 10 mm³, below 0.1 cc (OpenKBP's code fails here)
    column = dict(zip(METRIC_COLUMNS, dvh_metrics(dose, structures, voxel_volume_mm3=10.0)))
    assert column["D_0.1_cc", "Brainstem"] == 3.0 and column["mean", "Brainstem"] == 4.0


def test_matches_straightforward_computation_on_real_patients(sample_patients) -> None:
    rng = np.random.default_rng(1)
    cases = []
    for patient in sample_patients:
        prediction = np.clip(patient.dose * 0.93 + rng.normal(0, 1.5, patient.shape), 0, None).astype(np.float32)
        cases.append(case_of(patient, prediction * patient.possible_dose_mask))
    ours = score(cases)
    assert ours == pytest.approx(straightforward_scores(cases), rel=1e-9)
    assert ours[0] > 0 and ours[1] > 0


def test_dvh_curves_are_cumulative(phantom_small) -> None:
    levels, curves = dvh_curves(phantom_small.dose, phantom_small.structures)
    assert set(curves) == set(phantom_small.structures)
    for curve in curves.values():
        assert curve[0] == 100.0
        assert (np.diff(curve) <= 0).all()
    target = phantom_small.structures["PTV70"]
    at_60 = curves["PTV70"][np.searchsorted(levels, 60.0)]
    assert at_60 == pytest.approx(100.0 * (phantom_small.dose[target] >= 60.0).mean(), abs=1.0)


def test_roi_table_and_summary(phantom_small) -> None:
    scorer = OpenKBPScorer()
    scorer.add("a", phantom_small.dose, phantom_small.dose * 0.9, structures=phantom_small.structure_stack(),
               possible_dose_mask=phantom_small.possible_dose_mask, voxel_volume_mm3=phantom_small.voxel_volume_mm3)
    rows = scorer.evaluation.roi_table()
    assert {row["roi"] for row in rows} == set(phantom_small.structures)
    summary = scorer.evaluation.summary()
    assert summary["n"] == 1 and summary["dose_score"] > 0
