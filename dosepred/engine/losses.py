"""Training losses on dose / 70 Gy volumes, inside the possible-dose mask."""

from __future__ import annotations

import torch


def masked_l1(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over the possible-dose mask only: per sample, then the mean over the batch, so that
    every patient weighs the same whatever its size and however torchrun splits the batch over processes."""
    dims = tuple(range(1, prediction.dim()))
    per_sample = (torch.abs(prediction - target) * mask).sum(dims) / mask.sum(dims).clamp(min=1.0)
    return per_sample.mean()


def sorted_dose_l1(prediction: torch.Tensor, target: torch.Tensor, structures: torch.Tensor) -> torch.Tensor:
    """DVH-aware loss: per ROI, the mean |difference| between the sorted predicted and reference doses of its
    voxels, averaged over the sample's contoured ROIs, then over the batch (a sample without any counts 0, so
    the loss does not depend on how torchrun splits the batch). Sorted doses are the inverse DVH, so this is
    the L1 distance between the two DVH curves, which the OpenKBP DVH score samples at D99, D95, D1, D0.1cc
    and the mean. Voxels of a ROI on a coarser grid count where at least half covered."""
    samples = []
    for sample in range(len(prediction)):
        terms = []
        for roi in range(structures.shape[1]):
            inside = structures[sample, roi] >= 0.5
            if inside.any():
                predicted = torch.sort(prediction[sample, 0][inside]).values
                reference = torch.sort(target[sample, 0][inside]).values
                terms.append(torch.abs(predicted - reference).mean())
        samples.append(torch.stack(terms).mean() if terms else prediction[sample].sum() * 0.0)
    return torch.stack(samples).mean()
