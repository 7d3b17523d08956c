"""The adversarial critic: a conditional 3D patch discriminator on [input channels, dose]."""

from __future__ import annotations

from monai.networks.nets import PatchDiscriminator
from torch import nn

from dosepred.data.transforms import INPUT_CHANNELS
from dosepred.networks.registry import register_network


@register_network("patch_critic")
def patch_critic(*, in_channels: int = len(INPUT_CHANNELS) + 1, channels: int = 16, num_layers_d: int = 3) -> nn.Module:
    """MONAI's PatchDiscriminator: one realism score per patch of the (input, dose) pair."""
    return PatchDiscriminator(spatial_dims=3, num_layers_d=num_layers_d, channels=channels, in_channels=in_channels,
                              out_channels=1, norm="INSTANCE")
