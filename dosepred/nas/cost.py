"""What an architecture costs: parameters and multiply-accumulates (MACs) of its convolutions."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from functools import lru_cache

import torch
from torch import nn

from dosepred.data.transforms import INPUT_CHANNELS
from dosepred.nas.space import genotype_key
from dosepred.networks.searched import Genotype, build_network


def conv_macs(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
    """Multiply-accumulates of one convolution or linear call (batch included)."""
    if isinstance(module, nn.ConvTranspose3d):
        return inputs[0].numel() * module.out_channels // module.groups * math.prod(module.kernel_size)
    if isinstance(module, nn.Conv3d):
        return output.numel() * module.in_channels // module.groups * math.prod(module.kernel_size)
    return output.numel() * module.in_features  # nn.Linear


def count_macs(network: nn.Module, run: Callable[[], object]) -> dict[str, int]:
    """MACs of every convolution / linear layer of ``network`` during ``run()``, by module name."""
    counts: dict[str, int] = {}
    handles = []
    for name, module in network.named_modules():
        if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d, nn.Linear)):
            def hook(module: nn.Module, inputs: tuple, output: torch.Tensor, name: str = name) -> None:
                counts[name] = counts.get(name, 0) + conv_macs(module, inputs, output)
            handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    return counts


@lru_cache(maxsize=4096)
def _cost(genotype_json: str, channels: tuple[int, ...], resolution: int) -> tuple[int, int]:
    network = build_network(genotype=json.loads(genotype_json), channels=channels).eval()
    x = torch.zeros(1, len(INPUT_CHANNELS), resolution, resolution, resolution)
    macs = sum(count_macs(network, lambda: network(x)).values())
    return sum(p.numel() for p in network.parameters()), macs


def architecture_cost(genotype: Genotype, channels: Sequence[int], resolution: int) -> dict[str, int]:
    """{"parameters": ..., "macs": ...} of the stand-alone network for one input of ``resolution``^3."""
    parameters, macs = _cost(genotype_key(genotype), tuple(channels), resolution)
    return {"parameters": parameters, "macs": macs}
