"""What an architecture costs: parameters and multiply-accumulates (MACs) of its convolutions, counted by
``torch.utils.flop_counter``."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from functools import lru_cache

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from dosepred.data.transforms import INPUT_CHANNELS
from dosepred.nas.space import genotype_key
from dosepred.networks.searched import Genotype, build_network


def macs_by_module(network: nn.Module, run: Callable[[], object]) -> dict[str, int]:
    """Multiply-accumulates (half of ``torch.utils.flop_counter``'s FLOPs: convolutions and matrix products)
    of ``run()``, for every module of ``network`` by its name (a module counts its children; "" is the whole)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        run()
    root = type(network).__name__
    return {name.removeprefix(root).removeprefix("."): sum(flops.values()) // 2
            for name, flops in counter.get_flop_counts().items() if name == root or name.startswith(f"{root}.")}


@lru_cache(maxsize=4096)
def _cost(genotype_json: str, channels: tuple[int, ...], resolution: int, in_channels: int,
          stem_stride: int) -> tuple[int, int]:
    with torch.random.fork_rng(devices=[]):  # the caller's random stream stays as it was, cached or not
        network = build_network(genotype=json.loads(genotype_json), channels=channels, in_channels=in_channels,
                                stem_stride=stem_stride).eval()
    x = torch.zeros(1, in_channels, resolution, resolution, resolution)
    macs = macs_by_module(network, lambda: network(x))[""]
    return sum(p.numel() for p in network.parameters()), macs


def architecture_cost(genotype: Genotype, channels: Sequence[int], resolution: int, *,
                      in_channels: int = len(INPUT_CHANNELS), stem_stride: int = 1) -> dict[str, int]:
    """{"parameters": ..., "macs": ...} of the stand-alone network for one input of ``resolution``^3."""
    parameters, macs = _cost(genotype_key(genotype), tuple(channels), resolution, in_channels, stem_stride)
    return {"parameters": parameters, "macs": macs}
