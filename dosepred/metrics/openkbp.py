"""The OpenKBP competition metrics, as defined by the official ``dose_evaluation_class``.

Dose score: per patient, sum |reference - prediction| over ALL voxels divided by the number of voxels
in the possible-dose mask, then the mean over patients (so dose outside the mask counts: predictors
must zero it). DVH score: the mean absolute difference over every (patient, ROI, metric) entry that
exists: D_0.1cc and mean dose for organs at risk; D_99, D_95 and D_1 for targets, all with numpy's
default (linear) percentile. D_0.1cc is the percentile 100 - v / n * 100 with v = max(1, round(100 mm^3 /
voxel volume)) voxels and n the ROI's voxel count.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dosepred.io.patient import OARS, ROIS, TARGETS

OAR_METRICS = ("D_0.1_cc", "mean")
TARGET_METRICS = ("D_99", "D_95", "D_1")
#: (metric, ROI) pairs in the official column order.
METRIC_COLUMNS: tuple[tuple[str, str], ...] = tuple(
    [(m, roi) for m in OAR_METRICS for roi in OARS] + [(m, roi) for m in TARGET_METRICS for roi in TARGETS]
)
_COLUMN = {column: i for i, column in enumerate(METRIC_COLUMNS)}
_TARGET_PERCENTILES = (1.0, 5.0, 99.0)  # D_99, D_95, D_1


def dose_error(reference: np.ndarray, prediction: np.ndarray, possible_dose_mask: np.ndarray) -> float:
    """One patient's dose score: sum of |reference - prediction| over all voxels / mask voxel count."""
    difference = np.abs(reference.astype(np.float64) - prediction.astype(np.float64))
    return float(difference.sum() / np.count_nonzero(possible_dose_mask))


def dvh_metrics(dose: np.ndarray, structures: np.ndarray, voxel_volume_mm3: float) -> np.ndarray:
    """The DVH metrics of one dose, as a vector over ``METRIC_COLUMNS`` (NaN where a ROI is absent).

    Args:
        dose: dose volume (Gy).
        structures: (10, *dose.shape) bool masks in ``ROIS`` order.
        voxel_volume_mm3: volume of one voxel.
    """
    return _dvh_metrics(dose.ravel(), [np.flatnonzero(mask) for mask in structures], voxel_volume_mm3)


def dose_at_volume_cc(dose: np.ndarray, cc: float, voxel_volume_mm3: float) -> float:
    """Dcc: the dose the hottest ``cc`` receive (OpenKBP's D_0.1cc rule: at least one voxel; an organ smaller
    than ``cc`` gives its coldest voxel's dose, where OpenKBP's own code fails)."""
    voxels = max(1.0, float(np.round(1000.0 * cc / voxel_volume_mm3)))
    return float(np.percentile(dose, max(0.0, 100.0 - voxels / dose.size * 100.0)))


def _dvh_metrics(dose: np.ndarray, roi_voxels: list[np.ndarray], voxel_volume_mm3: float) -> np.ndarray:
    """``dvh_metrics`` on a flat dose with each ROI given as its flat voxel indices."""
    values = np.full(len(METRIC_COLUMNS), np.nan)
    for roi, voxels in zip(ROIS, roi_voxels):
        roi_dose = dose[voxels].astype(np.float64)
        if roi_dose.size == 0:
            continue
        if roi in OARS:
            values[_COLUMN["D_0.1_cc", roi]] = dose_at_volume_cc(roi_dose, 0.1, voxel_volume_mm3)
            values[_COLUMN["mean", roi]] = roi_dose.mean()
        else:
            d99, d95, d1 = np.percentile(roi_dose, _TARGET_PERCENTILES)
            values[[_COLUMN["D_99", roi], _COLUMN["D_95", roi], _COLUMN["D_1", roi]]] = d99, d95, d1
    return values


@dataclass
class Evaluation:
    """Scores of a set of predictions; rows follow ``patient_ids``, metric columns ``METRIC_COLUMNS``."""

    patient_ids: list[str] = field(default_factory=list)
    dose_errors: list[float] = field(default_factory=list)
    reference_metrics: list[np.ndarray] = field(default_factory=list)
    predicted_metrics: list[np.ndarray] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.patient_ids)

    @property
    def dose_score(self) -> float:
        return float(np.mean(self.dose_errors)) if self.n else float("nan")

    @property
    def dvh_errors(self) -> np.ndarray:
        """|reference - predicted| per patient and metric column (NaN where the ROI is absent)."""
        return np.abs(np.array(self.reference_metrics) - np.array(self.predicted_metrics)).reshape(self.n, -1)

    @property
    def dvh_score(self) -> float:
        errors = self.dvh_errors
        return float(np.nanmean(errors)) if np.isfinite(errors).any() else float("nan")

    def roi_table(self) -> list[dict[str, object]]:
        """Per (ROI, metric): patients with the ROI, mean reference, mean predicted, mean |difference|."""
        reference, predicted, errors = np.array(self.reference_metrics), np.array(self.predicted_metrics), self.dvh_errors
        rows = []
        for roi in ROIS:
            for metric in OAR_METRICS if roi in OARS else TARGET_METRICS:
                column = _COLUMN[metric, roi]
                present = np.isfinite(errors[:, column])
                if present.any():
                    rows.append({
                        "roi": roi, "metric": metric, "n": int(present.sum()),
                        "reference_gy": float(reference[present, column].mean()),
                        "predicted_gy": float(predicted[present, column].mean()),
                        "mean_abs_error_gy": float(errors[present, column].mean()),
                    })
        return rows

    def summary(self) -> dict[str, object]:
        return {"dose_score": self.dose_score, "dvh_score": self.dvh_score, "n": self.n,
                "patients": dict(zip(self.patient_ids, self.dose_errors)), "per_roi": self.roi_table()}


class OpenKBPScorer:
    """Accumulates patients one at a time (so only one volume set is in memory) into an ``Evaluation``."""

    def __init__(self) -> None:
        self.evaluation = Evaluation()

    def add(self, patient_id: str, reference: np.ndarray, prediction: np.ndarray, *,
            structures: np.ndarray, possible_dose_mask: np.ndarray, voxel_volume_mm3: float) -> float:
        """Score one patient; returns its dose error."""
        error = dose_error(reference, prediction, possible_dose_mask)
        roi_voxels = [np.flatnonzero(mask) for mask in structures]  # found once, used for both doses
        self.evaluation.patient_ids.append(patient_id)
        self.evaluation.dose_errors.append(error)
        self.evaluation.reference_metrics.append(_dvh_metrics(reference.ravel(), roi_voxels, voxel_volume_mm3))
        self.evaluation.predicted_metrics.append(_dvh_metrics(prediction.ravel(), roi_voxels, voxel_volume_mm3))
        return error
