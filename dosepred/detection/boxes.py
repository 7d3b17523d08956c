"""Boxes are (x0, y0, x1, y1) in pixels, x along columns, y along rows; x1, y1 are the far edges.

The delta coding is MONAI's ``BoxCoder``; torchvision's operators do not load with this project's CPU torch
build. IoU and non-maximum suppression are here because they run for every image at every step, where
MONAI's general versions (n-dimensional, dtype and finiteness checks) cost ten times more: NMS walks a
precomputed IoU matrix in numpy.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.apps.detection.utils.box_coder import BoxCoder

__all__ = ["BoxCoder", "batched_nms", "box_iou", "nms"]


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU, (len(a), len(b)); 0 where both boxes are empty."""
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=2)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(dim=1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(dim=1)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-9)


def nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Indices of the boxes kept by greedy non-maximum suppression, best score first."""
    order = scores.argsort(descending=True)
    overlaps = (box_iou(boxes[order], boxes[order]) > threshold).numpy()
    suppressed = np.zeros(len(order), dtype=bool)
    keep: list[torch.Tensor] = []
    for position in range(len(order)):
        if not suppressed[position]:
            keep.append(position)
            suppressed |= overlaps[position]
    return order[torch.as_tensor(keep, dtype=torch.long)]


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, threshold: float) -> torch.Tensor:
    """NMS within each group (class or pyramid level), best score first overall."""
    keep: list[torch.Tensor] = []
    for group in groups.unique():
        where = (groups == group).nonzero().squeeze(1)
        keep.append(where[nms(boxes[where], scores[where], threshold)])
    if not keep:
        return torch.zeros(0, dtype=torch.long)
    keep_all = torch.cat(keep)
    return keep_all[scores[keep_all].argsort(descending=True)]
