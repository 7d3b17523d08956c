"""The operation table of the searchable U-Net: every choice a block can make, by name."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


def conv_norm_act(in_channels: int, out_channels: int, kernel: int = 3, *, stride: int = 1, dilation: int = 1,
                  groups: int = 1) -> nn.Sequential:
    padding = dilation * (kernel - 1) // 2
    return nn.Sequential(
        nn.Conv3d(in_channels, out_channels, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups,
                  bias=False),
        nn.InstanceNorm3d(out_channels, affine=True),
        nn.LeakyReLU(0.01, inplace=True),
    )


class SqueezeExcitation(nn.Module):
    """Conv 3^3, then channel re-weighting from globally pooled features (Hu et al.)."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.reduction = reduction
        self.conv = conv_norm_act(channels, channels)
        hidden = max(1, channels // reduction)
        self.gate = nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Conv3d(channels, hidden, 1), nn.ReLU(inplace=True),
                                  nn.Conv3d(hidden, channels, 1), nn.Sigmoid())

    def forward(self, x):  # noqa: ANN001, ANN201
        x = self.conv(x)
        return x * self.gate(x)


#: Operations of a block's two slots (channels -> same channels, same size).
SLOT_OPS: dict[str, Callable[[int], nn.Module]] = {
    "conv3": lambda c: conv_norm_act(c, c),
    "dil_conv3": lambda c: conv_norm_act(c, c, dilation=2),
    "sep_conv3": lambda c: nn.Sequential(conv_norm_act(c, c, groups=c), conv_norm_act(c, c, kernel=1)),
    "se_conv3": lambda c: SqueezeExcitation(c),
    "identity": lambda c: nn.Identity(),
}

#: Encoder downsampling (in channels -> out channels, half size).
DOWN_OPS: dict[str, Callable[[int, int], nn.Module]] = {
    "strided_conv": lambda i, o: conv_norm_act(i, o, stride=2),
    "max_pool": lambda i, o: nn.Sequential(nn.MaxPool3d(2), conv_norm_act(i, o, kernel=1)),
    "avg_pool": lambda i, o: nn.Sequential(nn.AvgPool3d(2), conv_norm_act(i, o, kernel=1)),
}

#: Decoder upsampling (in channels -> out channels, double size).
UP_OPS: dict[str, Callable[[int, int], nn.Module]] = {
    "transposed_conv": lambda i, o: nn.Sequential(nn.ConvTranspose3d(i, o, 2, stride=2, bias=False),
                                                  nn.InstanceNorm3d(o, affine=True), nn.LeakyReLU(0.01, inplace=True)),
    "trilinear_conv": lambda i, o: nn.Sequential(nn.Upsample(scale_factor=2, mode="trilinear", align_corners=False),
                                                 conv_norm_act(i, o)),
}


def resampling(kind: str) -> tuple[str, dict[str, Callable[[int, int], nn.Module]]]:
    """A block kind's resampling key in a genotype and its ops: ("down", DOWN_OPS) or ("up", UP_OPS)."""
    return ("down", DOWN_OPS) if kind == "encoder" else ("up", UP_OPS)
