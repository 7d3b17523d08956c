"""OpenKBP dose and DVH scores, DVH curves and per-ROI tables (numpy only)."""

from dosepred.metrics.dvh import dvh_curves
from dosepred.metrics.openkbp import METRIC_COLUMNS, Evaluation, OpenKBPScorer, dose_error, dvh_metrics

__all__ = ["METRIC_COLUMNS", "Evaluation", "OpenKBPScorer", "dose_error", "dvh_curves", "dvh_metrics"]
