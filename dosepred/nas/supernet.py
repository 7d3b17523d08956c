"""Training a weight-sharing supernet: each step trains one path drawn by a sampler (uniform by default)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from dosepred.engine.trainer import masked_l1, sample_seed
from dosepred.nas.evaluator import SearchData
from dosepred.nas.space import SearchSpace
from dosepred.networks.searched import Genotype, UNetSpaceNet


def make_supernet(space: SearchSpace) -> UNetSpaceNet:
    return UNetSpaceNet(space.candidates(), channels=space.channels)


def train_supernet(supernet: UNetSpaceNet, space: SearchSpace, data: SearchData, *, steps: int, lr: float,
                   batch_size: int, device: torch.device,
                   sampler: Callable[[np.random.Generator], Genotype] | None = None,
                   on_step: Callable[[int, float], None] | None = None) -> list[float]:
    """Train ``supernet`` for ``steps`` steps, one sampled path per step; returns the losses."""
    sampler = sampler or space.sample
    rng = np.random.default_rng([data.seed, 1])
    optimizer = torch.optim.AdamW(supernet.parameters(), lr=lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps), eta_min=lr * 0.05)
    supernet.to(device).train()
    losses = []
    for step in range(steps):
        indices = rng.choice(len(data.train), size=min(batch_size, len(data.train)), replace=False)
        batch = {k: v.to(device) for k, v in data.train.collate(indices, lambda i: sample_seed(data.seed, step, i)).items()}
        genotype = sampler(rng)
        loss = masked_l1(supernet(batch["image"], genotype), batch["dose"], batch["possible_dose_mask"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(supernet.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step + 1, losses[-1])
    return losses
