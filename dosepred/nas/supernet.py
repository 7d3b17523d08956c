"""Weight-sharing supernets: building one, running one of its paths, and training it path by path."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from dosepred.engine.losses import masked_l1
from dosepred.engine.loop import clip_and_step, sample_seed, warmup_cosine
from dosepred.nas.evaluator import SearchData
from dosepred.nas.space import SearchSpace
from dosepred.networks.searched import Genotype, UNetSpaceNet


def make_supernet(space: SearchSpace) -> UNetSpaceNet:
    return UNetSpaceNet(space.candidates(), channels=space.channels)


class SupernetPath(nn.Module):
    """One architecture run with a supernet's weights (a view: nothing is copied)."""

    def __init__(self, supernet: UNetSpaceNet, genotype: Genotype) -> None:
        super().__init__()
        self.supernet, self.genotype = supernet, genotype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.supernet(x, self.genotype)


def paths_of(supernet: UNetSpaceNet) -> Callable[[dict], SupernetPath]:
    """``SearchResult.path`` for a plain supernet: an entry's genotype run with the supernet's weights."""
    return lambda entry: SupernetPath(supernet, entry["genotype"])


def training_batch(data: SearchData, rng: np.random.Generator, step: int, batch_size: int,
                   device: torch.device) -> dict[str, torch.Tensor]:
    """A random augmented batch of the training patients; the augmentation depends on (seed, step) only."""
    indices = rng.choice(len(data.train), size=min(batch_size, len(data.train)), replace=False)
    return data.train.batch(indices, [sample_seed(data.seed, step, i) for i in range(len(indices))], device)


def train_supernet(supernet: UNetSpaceNet, space: SearchSpace, data: SearchData, *, steps: int, lr: float,
                   batch_size: int, device: torch.device,
                   sampler: Callable[[np.random.Generator], Genotype] | None = None,
                   on_step: Callable[[int, float], None] | None = None) -> list[float]:
    """Train ``supernet`` for ``steps`` steps, one sampled path per step; returns the losses."""
    sampler = sampler or space.sample
    rng = np.random.default_rng([data.seed, 1])
    optimizer = torch.optim.AdamW(supernet.parameters(), lr=lr, weight_decay=1e-4)
    scheduler = warmup_cosine(optimizer, warmup_steps=0, steps=steps, min_lr_ratio=0.05)
    supernet.to(device).train()
    losses = []
    for step in range(steps):
        batch = training_batch(data, rng, step, batch_size, device)
        loss = masked_l1(supernet(batch["image"], sampler(rng)), batch["dose"], batch["possible_dose_mask"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip_and_step(optimizer, supernet.parameters(), grad_clip=1.0, skip_grad_norm=None)
        scheduler.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step + 1, losses[-1])
    return losses
