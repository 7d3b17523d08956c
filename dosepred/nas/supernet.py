"""Weight-sharing supernets: building one, running one of its paths, and training it path by path."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dosepred.devices import fast_path
from dosepred.engine.losses import masked_l1
from dosepred.engine.loop import TrainingLoop, sample_seed
from dosepred.nas.evaluator import SearchData
from dosepred.nas.space import SearchSpace, genotype_key
from dosepred.networks.searched import Genotype, UNetSpaceNet


def make_supernet(space: SearchSpace) -> UNetSpaceNet:
    return UNetSpaceNet(space.candidates(), channels=space.channels, in_channels=space.in_channels,
                        stem_stride=space.stem_stride)


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


def training_batch(data: SearchData, indices: np.ndarray, step: int, device: torch.device) -> dict[str, torch.Tensor]:
    """The augmented batch of these training patients; the augmentation depends on (seed, step) only."""
    return data.train.batch(indices, [sample_seed(data.seed, step, i) for i in range(len(indices))], device)


def supernet_config(*, seed: int, device: torch.device, steps: int, lr: float, batch_size: int) -> dict[str, Any]:
    """The training loop's config for a supernet: the project's recipe without warm-up, decaying to 5 %."""
    return {"seed": seed, "device": str(device), "threads": torch.get_num_threads(), "validate_every": steps,
            "checkpoint_every": max(1, min(100, steps)),
            "optim": {"steps": steps, "batch_size": batch_size, "lr": lr, "weight_decay": 1e-4, "warmup_steps": 0,
                      "min_lr_ratio": 0.05, "grad_clip": 1.0, "skip_grad_norm": None, "max_minutes": None}}


class SupernetTrainer(TrainingLoop):
    """A weight-sharing supernet trained through the training loop, one sampled path per step: the batch and
    the path of a step are functions of (seed, step) (``draw``), so a search resumes its supernet exactly.
    Strategies with their own supernets subclass it (``dosepred/nas/strategies/``)."""

    def __init__(self, config: dict[str, Any], run_dir: str | Path, *, space: SearchSpace, data: SearchData,
                 resume: bool = False) -> None:
        self.space, self.data = space, data
        super().__init__(config, run_dir, resume=resume, overwrite=not resume)
        if self.amp:  # the parameters stay the optimiser's: only their memory layout changes
            self.network.to(memory_format=torch.channels_last_3d)

    @property
    def amp(self) -> bool:
        """bf16 autocast and channels-last where the device computes bf16 natively (dosepred.devices)."""
        return fast_path(self.device)

    def path_loss(self, run: Callable[[torch.Tensor], torch.Tensor], samples: dict[str, torch.Tensor]) -> torch.Tensor:
        """The masked L1 of ``run(image)``, on the fast path where there is one; every strategy's step uses it."""
        image = samples["image"].contiguous(memory_format=torch.channels_last_3d) if self.amp else samples["image"]
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            prediction = run(image)
        return masked_l1(prediction.float(), samples["dose"], samples["possible_dose_mask"])

    def build_network(self) -> nn.Module:
        return make_supernet(self.space).to(self.device)

    def build_data(self) -> None:
        """The search's data, given."""

    def draw(self, step: int) -> tuple[np.ndarray, Genotype]:
        """The training patients and the architecture of ``step``."""
        rng = np.random.default_rng([self.config["seed"], 1, step])
        size = min(self.config["optim"]["batch_size"], len(self.data.train))
        return rng.choice(len(self.data.train), size=size, replace=False), self.space.sample(rng)

    def sampled_architectures(self) -> int:
        """How many distinct architectures the steps so far trained on."""
        return len({genotype_key(self.draw(step)[1:]) for step in range(self.step)})

    def make_batch(self, step: int) -> tuple[dict[str, torch.Tensor], Genotype]:
        indices, genotype = self.draw(step)
        return training_batch(self.data, indices, step, self.device), genotype

    def train_step(self, batch: tuple[dict[str, torch.Tensor], Genotype]) -> float:
        samples, genotype = batch
        self.network.train()
        loss = self.path_loss(lambda image: self.network(image, genotype), samples)
        self.optimize(loss)
        return float(loss.detach())

    def export(self, folder: Path) -> None:
        """Nothing: the search writes the supernet's weights with its results."""


class FairSupernetTrainer(SupernetTrainer):
    """Strict-fairness sampling (FairNAS, Chu et al. 2021): each step runs the batch through the paths of
    ``SearchSpace.fair_paths``, which use every slot operation of every block once, and updates once with the
    mean of their gradients, so no operation is trained more often than another. A step costs
    ``len(SLOT_OPS)`` forward passes. A path whose gradient is not finite (oneDNN's occasional garbage bf16
    backward pass, see ``clip_and_step``) is left out of the mean rather than costing the whole step."""

    def draw(self, step: int) -> tuple[np.ndarray, list[Genotype]]:  # type: ignore[override]
        rng = np.random.default_rng([self.config["seed"], 1, step])
        size = min(self.config["optim"]["batch_size"], len(self.data.train))
        return rng.choice(len(self.data.train), size=size, replace=False), self.space.fair_paths(rng)

    def sampled_architectures(self) -> int:
        return len({genotype_key(path) for step in range(self.step) for path in self.draw(step)[1]})

    def train_step(self, batch: tuple[dict[str, torch.Tensor], list[Genotype]]) -> float:  # type: ignore[override]
        samples, paths = batch
        self.network.train()
        parameters = list(self.network.parameters())
        total: list[torch.Tensor | None] = [None] * len(parameters)
        losses = []
        for genotype in paths:
            loss = self.path_loss(lambda image: self.network(image, genotype), samples)
            gradients = torch.autograd.grad(loss, parameters, allow_unused=True)
            if torch.isfinite(torch.nn.utils.get_total_norm([g for g in gradients if g is not None])):
                total = [g if t is None else t if g is None else t + g for t, g in zip(total, gradients)]
                losses.append(float(loss.detach()))
        for parameter, gradient in zip(parameters, total):
            parameter.grad = None if gradient is None else gradient / len(losses)
        self.apply_gradients()
        return sum(losses) / len(losses) if losses else float("nan")


def fit_supernet(make_trainer: Callable[[dict[str, Any], Path, bool], SupernetTrainer], *, run_dir: Path | None,
                 resume: bool, seed: int, device: torch.device, steps: int, lr: float, batch_size: int,
                 on_step: Callable[[SupernetTrainer], None] | None = None) -> tuple[SupernetTrainer, list[float]]:
    """Build a supernet trainer with ``make_trainer(config, run, resume)`` in ``run_dir`` (None: a temporary
    folder; ``resume``: from its checkpoint, when it has one), train it, calling ``on_step(trainer)`` after each
    step; returns it and the losses of the steps trained now."""
    config = supernet_config(seed=seed, device=device, steps=steps, lr=lr, batch_size=batch_size)
    losses: list[float] = []

    with contextlib.ExitStack() as stack:
        run = run_dir if run_dir is not None else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        trainer = make_trainer(config, run, resume and (run / "checkpoints" / "last.pt").is_file())

        def step_done(step: int, row: dict[str, float]) -> None:
            losses.append(row["train_loss"])
            if on_step is not None:
                on_step(trainer)

        trainer.fit(step_done)
    return trainer, losses
