"""Training targets: which anchors and RoIs are objects, of which seen class, and which are ignored.

Unseen structures are present in training slices (a slice with a right parotid nearly always shows the
left one), so their boxes are never targets: anchors or RoIs overlapping them are neither object nor
background, and nothing about their appearance is learnt.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dosepred.detection.boxes import box_iou

IGNORE = -1


@dataclass
class Assignment:
    """Per box: ``labels`` (0 background, k > 0 the k-th seen class, IGNORE) and the matched ground truth box."""

    labels: torch.Tensor
    matched_boxes: torch.Tensor


def assign(boxes: torch.Tensor, gt_boxes: torch.Tensor, gt_classes: torch.Tensor, ignore_boxes: torch.Tensor, *,
           positive_iou: float, negative_iou: float, best_match: bool = False, ignore_iou: float = 0.3) -> Assignment:
    """Label ``boxes`` against the seen ground truth (``gt_classes`` are 1-based seen positions).

    Positive at IoU >= ``positive_iou``; background below ``negative_iou`` unless it overlaps an unseen box by
    ``ignore_iou`` or more; ignored in between. ``best_match`` (the RPN's rule) also makes each ground truth's
    best box positive, so that small structures that no anchor covers well still get one.
    """
    labels = torch.full((len(boxes),), IGNORE, dtype=torch.long)
    matched = torch.zeros(len(boxes), 4)
    if len(gt_boxes):
        overlaps = box_iou(boxes, gt_boxes)
        best_iou, best_gt = overlaps.max(dim=1)
        matched = gt_boxes[best_gt]
        labels[best_iou < negative_iou] = 0
        positive = best_iou >= positive_iou
        if best_match:
            best_for_gt = overlaps.max(dim=0).values
            ties = (overlaps == best_for_gt[None]) & (best_for_gt[None] > 0)
            rows, columns = ties.nonzero(as_tuple=True)
            best_gt[rows] = columns
            matched = gt_boxes[best_gt]
            positive[rows] = True
        labels[positive] = gt_classes[best_gt[positive]]
    else:
        labels[:] = 0
    if len(ignore_boxes):
        near_unseen = box_iou(boxes, ignore_boxes).max(dim=1).values >= ignore_iou
        labels[(labels == 0) & near_unseen] = IGNORE
    return Assignment(labels, matched)


def sample(labels: torch.Tensor, count: int, positive_fraction: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices of at most ``count`` labelled boxes, at most ``positive_fraction`` of them positive."""
    positives = (labels > 0).nonzero().squeeze(1)
    negatives = (labels == 0).nonzero().squeeze(1)
    positives = positives[torch.randperm(len(positives), generator=generator)[:int(count * positive_fraction)]]
    negatives = negatives[torch.randperm(len(negatives), generator=generator)[:count - len(positives)]]
    return torch.cat([positives, negatives])
