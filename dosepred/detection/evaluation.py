"""Zero-shot (unseen classes only) and generalised zero-shot (seen + unseen) evaluation on slices."""

from __future__ import annotations

import torch

from dosepred.io.patient import ROIS
from dosepred.detection.data import SEEN, UNSEEN, SliceSet, class_index, network_input
from dosepred.detection.detector import BLCDetector, Detections
from dosepred.detection.metrics import average_precision, harmonic_mean, recall_at
from dosepred.progress import Progress

RECALL_IOUS = (0.4, 0.5, 0.6)


def detect_slices(detector: BLCDetector, slices: SliceSet, rows: list[int], class_ids: torch.Tensor, *,
                  batch_size: int = 16, phase: str = "detecting", progress: Progress | None = None) -> list[Detections]:
    detections: list[Detections] = []
    for start in range(0, len(rows), batch_size):
        chosen = rows[start:start + batch_size]
        detections += detector.detect(network_input(slices.images[chosen]), class_ids)
        if progress:
            progress(phase, min(start + batch_size, len(rows)), len(rows))
    return detections


def evaluate_detector(detector: BLCDetector, slices: SliceSet, *, progress: Progress | None = None) -> dict:
    """ZSD on the slices showing an unseen structure (Recall@100 at each IoU, mAP@0.5); GZSD on every slice."""
    unseen, seen = class_index(UNSEEN), class_index(SEEN)
    truth = list(zip(slices.boxes, slices.labels, strict=True))
    zsd_rows = [row for row, labels in enumerate(slices.labels) if torch.isin(labels, unseen).any()]
    zsd = detect_slices(detector, slices, zsd_rows, unseen, phase="ZSD", progress=progress)
    zsd_truth = [truth[row] for row in zsd_rows]
    ap = {ROIS[label]: average_precision(zsd, zsd_truth, label) for label in unseen.tolist()}
    all_rows = list(range(len(slices)))
    gzsd = detect_slices(detector, slices, all_rows, torch.arange(len(ROIS)), phase="GZSD", progress=progress)
    seen_recall = recall_at(gzsd, truth, seen.tolist(), 0.5)
    unseen_recall = recall_at(gzsd, truth, unseen.tolist(), 0.5)
    return {
        "zsd": {"slices": len(zsd_rows),
                **{f"recall@100_iou{iou}": recall_at(zsd, zsd_truth, unseen.tolist(), iou) for iou in RECALL_IOUS},
                "map@0.5": sum(ap.values()) / len(ap), "ap@0.5": ap},
        "gzsd": {"slices": len(all_rows), "seen_recall@100_iou0.5": seen_recall,
                 "unseen_recall@100_iou0.5": unseen_recall, "harmonic_mean": harmonic_mean(seen_recall, unseen_recall),
                 "recall_per_class": {ROIS[label]: recall_at(gzsd, truth, [label], 0.5) for label in range(len(ROIS))}},
    }
