"""Anchors: at every position of every pyramid level, one box per aspect ratio, centred on the cell."""

from __future__ import annotations

import torch


def level_anchors(size: float, stride: int, ratios: tuple[float, ...], height: int, width: int) -> torch.Tensor:
    """Anchors of one level, (height * width * len(ratios), 4), ordered position-major like the head's outputs."""
    ratios_t = torch.tensor(ratios, dtype=torch.float32)
    half_w = 0.5 * size / ratios_t.sqrt()  # ratio = height / width at constant area size**2
    half_h = 0.5 * size * ratios_t.sqrt()
    shapes = torch.stack([-half_w, -half_h, half_w, half_h], dim=1)
    ys = (torch.arange(height, dtype=torch.float32) + 0.5) * stride
    xs = (torch.arange(width, dtype=torch.float32) + 0.5) * stride
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")
    centres = torch.stack([cx, cy, cx, cy], dim=-1).reshape(-1, 1, 4)
    return (centres + shapes[None]).reshape(-1, 4)


def pyramid_anchors(sizes: tuple[float, ...], strides: tuple[int, ...], ratios: tuple[float, ...],
                    image_size: int) -> list[torch.Tensor]:
    """The anchors of each level for a square image of ``image_size`` pixels."""
    return [level_anchors(size, stride, ratios, image_size // stride, image_size // stride)
            for size, stride in zip(sizes, strides, strict=True)]
