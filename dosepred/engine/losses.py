"""Training losses on dose / 70 Gy volumes, inside the possible-dose mask."""

from __future__ import annotations

import torch


def masked_l1(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over the possible-dose mask only."""
    return (torch.abs(prediction - target) * mask).sum() / mask.sum().clamp(min=1.0)


def sorted_dose_l1(prediction: torch.Tensor, target: torch.Tensor, structures: torch.Tensor) -> torch.Tensor:
    """DVH-aware loss: per ROI, the mean |difference| between the sorted predicted and reference doses of its
    voxels, averaged over every (sample, contoured ROI). Sorted doses are the inverse DVH, so this is the
    L1 distance between the two DVH curves, which the OpenKBP DVH score samples at D99, D95, D1, D0.1cc and
    the mean. Voxels of a ROI on a coarser grid count where at least half covered."""
    terms = []
    for sample in range(len(prediction)):
        for roi in range(structures.shape[1]):
            inside = structures[sample, roi] >= 0.5
            if inside.any():
                predicted = torch.sort(prediction[sample, 0][inside]).values
                reference = torch.sort(target[sample, 0][inside]).values
                terms.append(torch.abs(predicted - reference).mean())
    return torch.stack(terms).mean() if terms else prediction.sum() * 0.0
