"""Baseline 3D U-Nets from MONAI blocks."""

from __future__ import annotations

import math
from collections.abc import Sequence

from monai.networks.nets import UNet
from torch import nn

from dosepred.data.transforms import INPUT_CHANNELS
from dosepred.networks.registry import register_network


@register_network("unet")
def unet(*, in_channels: int = len(INPUT_CHANNELS), out_channels: int = 1,
         channels: Sequence[int] = (16, 32, 64, 128), strides: Sequence[int] = (2, 2, 2),
         num_res_units: int = 2, norm: str = "instance", dropout: float = 0.0) -> nn.Module:
    """MONAI's residual U-Net: strided-conv downsampling, transposed-conv upsampling, skip connections."""
    network = UNet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels, channels=tuple(channels),
                   strides=tuple(strides), num_res_units=num_res_units, norm=norm, dropout=dropout)
    network.grid_multiple = math.prod(strides)  # the grid edges it takes: the skips must meet the upsampled maps
    return network
