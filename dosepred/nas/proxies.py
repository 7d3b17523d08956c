"""Zero-cost proxies: an architecture's promise guessed at initialisation, from one batch, without training.

They are the baseline a weight-sharing search must beat at ranking architectures (Abdelfattah et al. 2021,
"Zero-Cost Proxies for Lightweight NAS"). Every proxy is oriented so that a larger value promises a better
(lower) dose score: the parameter count, the gradient norm of the masked L1 loss, and SNIP's saliency
(the sum over weights of |weight x gradient|). Synflow is left out: its data-free input meets every block's
instance normalisation, which removes the scale that synflow measures.
"""

from __future__ import annotations

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


PROXIES: dict[str, Callable[[nn.Module, dict[str, torch.Tensor]], float]] = {
    "parameters": parameters, "grad_norm": grad_norm, "snip": snip}
