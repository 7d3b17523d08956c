"""RoI align on a feature pyramid, built on ``grid_sample`` (torchvision's ``roi_align`` does not load here)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def roi_align(features: torch.Tensor, boxes: torch.Tensor, image_index: torch.Tensor, *, image_size: int,
              output_size: int = 7, sampling: int = 2) -> torch.Tensor:
    """Average of ``sampling``² bilinear samples in each of the ``output_size``² bins of every box.

    ``boxes`` are in image pixels; ``image_index`` says which image of the batch each box lies in. Sample
    points are placed at continuous image coordinates (RoIAlign's ``aligned=True``), which ``grid_sample``
    with ``align_corners=False`` takes as 2 * coordinate / image_size - 1 whatever the feature's stride.
    """
    if len(boxes) == 0:
        return features.new_zeros(0, features.shape[1], output_size, output_size)
    steps = (torch.arange(output_size * sampling, dtype=features.dtype) + 0.5) / (output_size * sampling)
    x = boxes[:, 0:1] + steps * (boxes[:, 2:3] - boxes[:, 0:1])  # (R, output_size * sampling)
    y = boxes[:, 1:2] + steps * (boxes[:, 3:4] - boxes[:, 1:2])
    side = output_size * sampling
    grid = torch.stack([x[:, None, :].expand(-1, side, -1), y[:, :, None].expand(-1, -1, side)], dim=-1)
    grid = 2 * grid / image_size - 1
    pooled = features.new_zeros(len(boxes), features.shape[1], output_size, output_size)
    for image in image_index.unique().tolist():  # one sampling call per image: the map is never copied per box
        where = (image_index == image).nonzero().squeeze(1)
        sampled = F.grid_sample(features[image:image + 1], grid[where].reshape(1, -1, side, 2), mode="bilinear",
                                padding_mode="zeros", align_corners=False)
        pooled_image = F.avg_pool2d(sampled, sampling)  # bins never straddle two boxes: side is a multiple
        pooled[where] = pooled_image.reshape(features.shape[1], len(where), output_size, output_size).transpose(0, 1)
    return pooled


def pyramid_level(boxes: torch.Tensor, anchor_sizes: tuple[float, ...]) -> torch.Tensor:
    """The pyramid level for each box: the one whose anchor size is nearest its size in log scale."""
    size = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=1e-6).sqrt()
    level = torch.round(torch.log2(size / anchor_sizes[0]))
    return level.clamp(0, len(anchor_sizes) - 1).long()


def pyramid_roi_align(levels: list[torch.Tensor], boxes: torch.Tensor, image_index: torch.Tensor, *,
                      anchor_sizes: tuple[float, ...], image_size: int, output_size: int = 7) -> torch.Tensor:
    """RoI align with each box read from the pyramid level matching its size."""
    chosen = pyramid_level(boxes, anchor_sizes)
    pooled = levels[0].new_zeros(len(boxes), levels[0].shape[1], output_size, output_size)
    for level, features in enumerate(levels):
        where = (chosen == level).nonzero().squeeze(1)
        if len(where):
            pooled[where] = roi_align(features, boxes[where], image_index[where], image_size=image_size,
                                      output_size=output_size)
    return pooled

