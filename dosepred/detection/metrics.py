"""Zero-shot detection metrics: Recall@K at an IoU and VOC average precision, per class over a set of images.

A detection matches a ground-truth box of its own class at IoU >= the threshold; matching is greedy in score
order and one-to-one, per image (the ZSD convention of Bansal et al. and BLC). Each detection takes the
best-overlapping ground-truth box not yet matched, as COCO does; PASCAL VOC instead counts a detection whose
best box is already taken as a false positive (rare here: per-class NMS at 0.5 removes most duplicates).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from dosepred.detection.boxes import box_iou
from dosepred.detection.detector import Detections


def _matches(detections: Detections, gt_boxes: torch.Tensor, gt_labels: torch.Tensor, label: int,
             iou_threshold: float, top_k: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(scores, is-true-positive) of one image's top-k detections of ``label``, and its ground-truth count."""
    detections = Detections(detections.boxes[:top_k], detections.scores[:top_k], detections.labels[:top_k])
    mine = (detections.labels == label).nonzero().squeeze(1)
    mine = mine[detections.scores[mine].argsort(descending=True)]
    truth = gt_boxes[gt_labels == label]
    hits = np.zeros(len(mine), dtype=bool)
    if len(mine) and len(truth):
        overlaps = box_iou(detections.boxes[mine], truth).numpy()
        taken = np.zeros(len(truth), dtype=bool)
        for row, candidates in enumerate(overlaps):
            candidates = np.where(taken, -1.0, candidates)
            best = int(candidates.argmax())
            if candidates[best] >= iou_threshold:
                taken[best] = hits[row] = True
    return detections.scores[mine].numpy(), hits, len(truth)


def recall_at(detections: Sequence[Detections], truth: Sequence[tuple[torch.Tensor, torch.Tensor]],
              labels: Sequence[int], iou_threshold: float, top_k: int = 100) -> float:
    """Share of the ground-truth boxes of ``labels`` found among each image's ``top_k`` detections (all classes pooled)."""
    found = total = 0
    for image_detections, (gt_boxes, gt_labels) in zip(detections, truth, strict=True):
        for label in labels:
            _, hits, count = _matches(image_detections, gt_boxes, gt_labels, label, iou_threshold, top_k)
            found += int(hits.sum())
            total += count
    return found / total if total else float("nan")


def average_precision(detections: Sequence[Detections], truth: Sequence[tuple[torch.Tensor, torch.Tensor]],
                      label: int, iou_threshold: float = 0.5, top_k: int = 100) -> float:
    """Area under the interpolated precision-recall curve of one class (VOC 2010+ all-point)."""
    scores, hits, total = [], [], 0
    for image_detections, (gt_boxes, gt_labels) in zip(detections, truth, strict=True):
        image_scores, image_hits, count = _matches(image_detections, gt_boxes, gt_labels, label, iou_threshold, top_k)
        scores.append(image_scores)
        hits.append(image_hits)
        total += count
    if total == 0:
        return float("nan")
    order = np.argsort(-np.concatenate(scores), kind="stable")
    true_positives = np.cumsum(np.concatenate(hits)[order])
    recall = np.concatenate([[0.0], true_positives / total, [true_positives[-1] / total if len(order) else 0.0]])
    precision = np.concatenate([[1.0], true_positives / np.arange(1, len(order) + 1), [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # the envelope: best precision at this recall or more
    return float(np.sum(np.diff(recall) * precision[1:]))


def harmonic_mean(a: float, b: float) -> float:
    """Of two recalls; NaN where either is (no ground truth of those classes), not 0."""
    if math.isnan(a) or math.isnan(b):
        return math.nan
    return 2 * a * b / (a + b) if a + b > 0 else 0.0
