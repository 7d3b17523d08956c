"""Weight-sharing supernets: building one, running one of its paths, and training it path by path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dosepred.engine.losses import masked_l1
from dosepred.engine.loop import TrainingLoop, sample_seed
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


def supernet_config(*, seed: int, device: torch.device, steps: int, lr: float, batch_size: int) -> dict[str, Any]:
    """The training loop's config for a supernet: the project's recipe without warm-up, decaying to 5 %."""
    return {"seed": seed, "device": str(device), "threads": torch.get_num_threads(), "validate_every": steps,
            "checkpoint_every": max(1, min(100, steps)),
            "optim": {"steps": steps, "batch_size": batch_size, "lr": lr, "weight_decay": 1e-4, "warmup_steps": 0,
                      "min_lr_ratio": 0.05, "grad_clip": 1.0, "skip_grad_norm": None, "max_minutes": None}}


class SupernetTrainer(TrainingLoop):
    """A weight-sharing supernet trained through the training loop, one sampled path per step: the batch and
    the path of a step are functions of (seed, step), so a search resumes its supernet exactly."""

    def __init__(self, config: dict[str, Any], run_dir: str | Path, *, space: SearchSpace, data: SearchData,
                 sampler: Callable[[np.random.Generator], Genotype] | None = None, resume: bool = False) -> None:
        self.space, self.data, self.sampler = space, data, sampler or space.sample
        super().__init__(config, run_dir, resume=resume, overwrite=not resume)

    def build_network(self) -> nn.Module:
        return make_supernet(self.space).to(self.device)

    def build_data(self) -> None:
        """The search's data, given."""

    def make_batch(self, step: int) -> tuple[dict[str, torch.Tensor], Genotype]:
        rng = np.random.default_rng([self.config["seed"], 1, step])
        batch = training_batch(self.data, rng, step, self.config["optim"]["batch_size"], self.device)
        return batch, self.sampler(rng)

    def train_step(self, batch: tuple[dict[str, torch.Tensor], Genotype]) -> float:
        samples, genotype = batch
        self.network.train()
        loss = masked_l1(self.network(samples["image"], genotype), samples["dose"], samples["possible_dose_mask"])
        self.optimize(loss)
        return float(loss.detach())

    def export(self, folder: Path) -> None:
        """Nothing: the search writes the supernet's weights with its results."""


def train_supernet(supernet_run: str | Path, space: SearchSpace, data: SearchData, *, steps: int, lr: float,
                   batch_size: int, device: torch.device,
                   sampler: Callable[[np.random.Generator], Genotype] | None = None, resume: bool = False,
                   on_step: Callable[[int, float], None] | None = None) -> tuple[UNetSpaceNet, list[float]]:
    """Train a supernet in the run folder ``supernet_run`` (with ``resume``: from its checkpoint, when it has
    one); returns the supernet and the losses of the steps trained now."""
    config = supernet_config(seed=data.seed, device=device, steps=steps, lr=lr, batch_size=batch_size)
    resume = resume and (Path(supernet_run) / "checkpoints" / "last.pt").is_file()
    trainer = SupernetTrainer(config, supernet_run, space=space, data=data, sampler=sampler, resume=resume)
    losses: list[float] = []

    def step_done(step: int, row: dict[str, float]) -> None:
        losses.append(row["train_loss"])
        if on_step is not None:
            on_step(step, row["train_loss"])

    trainer.fit(step_done)
    return trainer.network, losses
