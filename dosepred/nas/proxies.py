"""Zero-cost proxies: an architecture's promise guessed at initialisation, from one batch, without training.

They are the baseline a weight-sharing search must beat at ranking architectures (Abdelfattah et al. 2021,
"Zero-Cost Proxies for Lightweight NAS"). Every proxy is oriented so that a larger value promises a better
(lower) dose score: the parameter count, the gradient norm of the masked L1 loss, and SNIP's saliency
(the sum over weights of |weight x gradient|), and synflow (Tanaka et al. 2020: with every parameter made
positive, the sum of |parameter x gradient| of the summed output for an all-ones input; data-free). Synflow's
constant input meets every block's instance normalisation, which would remove the scale it measures, so it runs
on a copy whose normalisation layers are identities (at initialisation their affine part is the identity too).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch import nn

from dosepred.engine.losses import masked_l1


def parameters(network: nn.Module, batch: dict[str, torch.Tensor]) -> float:
    return float(sum(p.numel() for p in network.parameters()))


def _gradients(network: nn.Module, batch: dict[str, torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    network.zero_grad(set_to_none=True)
    network.train()
    masked_l1(network(batch["image"]), batch["dose"], batch["possible_dose_mask"]).backward()
    return [(p.detach(), p.grad.detach()) for p in network.parameters() if p.grad is not None]


def grad_norm(network: nn.Module, batch: dict[str, torch.Tensor]) -> float:
    return float(torch.sqrt(sum((g.float() ** 2).sum() for _, g in _gradients(network, batch))))


def snip(network: nn.Module, batch: dict[str, torch.Tensor]) -> float:
    return float(sum((w * g).abs().sum() for w, g in _gradients(network, batch)))


def synflow(network: nn.Module, batch: dict[str, torch.Tensor]) -> float:
    """The logarithm of synflow's score (it spans many orders of magnitude; the order is what counts)."""
    probe = copy.deepcopy(network).double().train()
    for name, module in list(probe.named_modules()):
        if isinstance(module, nn.InstanceNorm3d):
            probe.set_submodule(name, nn.Identity())
    with torch.no_grad():
        for parameter in probe.parameters():
            parameter.abs_()
    ones = torch.ones((1, *batch["image"].shape[1:]), dtype=torch.float64)
    probe(ones).sum().backward()
    score = sum(float((p.detach() * p.grad).sum()) for p in probe.parameters() if p.grad is not None)
    return math.log(score)


PROXIES: dict[str, Callable[[nn.Module, dict[str, torch.Tensor]], float]] = {
    "parameters": parameters, "grad_norm": grad_norm, "snip": snip, "synflow": synflow}
