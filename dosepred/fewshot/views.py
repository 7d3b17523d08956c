"""Differentiable views: bounded rotation, scale and translation (affine grid) plus intensity gain, bias and noise.

A view is 7 numbers in [-1, 1] per image, mapped onto the bounds of ``ViewFamily``; random views draw them
uniformly, the learned generator (``networks.ViewGenerator``) predicts them. There is deliberately no mirror
flip: flipping left-right turns a LeftParotid patch into a RightParotid one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

#: rotation, log-scale, shift along x, shift along y, gain, bias, noise standard deviation.
N_PARAMS = 7


@dataclass(frozen=True)
class ViewFamily:
    """The largest transformation a view may apply (rotation in degrees, shift as a fraction of the half-width)."""

    rotation_deg: float = 20.0
    scale: float = 1.2
    shift: float = 0.15
    gain: float = 0.2
    bias: float = 0.1
    noise: float = 0.05

    def scaled(self, strength: float) -> ViewFamily:
        """Every bound times ``strength`` (the scale bound in log space): 0 is the identity view."""
        return ViewFamily(self.rotation_deg * strength, self.scale ** strength, self.shift * strength,
                          self.gain * strength, self.bias * strength, self.noise * strength)


def apply_views(images: torch.Tensor, params: torch.Tensor, family: ViewFamily = ViewFamily(), *,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Transform ``images`` (B, C, H, W) by ``params`` (B, 7) in [-1, 1]; differentiable in both.

    Outside the image is 0 (air for CT patches, background for digits).
    """
    angle = params[:, 0] * math.radians(family.rotation_deg)
    scale = torch.exp(params[:, 1] * math.log(family.scale))
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    shift = params[:, 2:4] * family.shift
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    warped = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    gain = 1.0 + params[:, 4] * family.gain
    bias = params[:, 5] * family.bias
    sigma = (params[:, 6] + 1.0) / 2.0 * family.noise
    noise = torch.randn(images.shape, generator=generator, dtype=images.dtype)
    return warped * gain.view(-1, 1, 1, 1) + bias.view(-1, 1, 1, 1) + sigma.view(-1, 1, 1, 1) * noise


def random_params(count: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform view parameters: the "random views" baseline."""
    return torch.rand(count, N_PARAMS, generator=generator) * 2.0 - 1.0
