"""The one training loop, and the one optimisation recipe every model of the project trains with.

``TrainingLoop`` owns what every training shares: the run folder (refused when it holds a run, unless
resumed or overwritten), threads, device, seed, AdamW with linear warm-up then cosine decay, gradient
clipping with a skip for garbage gradients, validation and checkpoints on schedule, a wall-clock budget,
``metrics.csv`` and exact resume. A model's training is a subclass that fills in the hooks: the network,
its batches, one optimisation step, validation and the exported model folder (the dose trainer,
distillation, the detector, the few-shot encoders, and the search strategies' supernet trainers, whose steps
interleave architecture updates).

Exact resume: a subclass makes each step's batch a function of (seed, step) alone, and a checkpoint holds
the network, optimiser, scheduler, torch RNG, step and history (plus what a subclass adds).
"""

from __future__ import annotations

import csv
import functools
import gc
import logging
import math
import pickle
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dosepred.devices import resolve_device, set_threads
from dosepred.engine.config import save_config
from dosepred.engine.distributed import Topology, any_rank, barrier, init_distributed, leave
from dosepred.io.files import atomic_file, remove_outputs
from dosepred.progress import Progress

log = logging.getLogger(__name__)


def sample_seed(seed: int, step: int, position: int) -> int:
    """The random seed of one sample of one step: the same on every rank and after a resume."""
    return int(np.random.SeedSequence([seed, step, position]).generate_state(1)[0])


def lr_factor(step: int, *, warmup_steps: int, steps: int, min_lr_ratio: float) -> float:
    """The recipe's learning-rate factor at ``step``: linear warm-up over ``warmup_steps``, then cosine decay to
    ``min_lr_ratio`` at ``steps`` (``min_lr_ratio`` 1: constant after the warm-up)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, steps - warmup_steps))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_cosine(optimizer: torch.optim.Optimizer, *, warmup_steps: int, steps: int,
                  min_lr_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    """The recipe's schedule (``lr_factor``) for an optimiser."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(
        lr_factor, warmup_steps=warmup_steps, steps=steps, min_lr_ratio=min_lr_ratio))


def clip_and_step(optimizer: torch.optim.Optimizer, parameters: Iterable[nn.Parameter], *, grad_clip: float | None,
                  skip_grad_norm: float | None) -> bool:
    """Clip the gradients (``grad_clip`` None: no clipping) and step, unless their norm is not finite or above
    ``skip_grad_norm`` (as AMP's scaler skips inf steps): on this project's CPU, oneDNN's bf16 backward pass
    now and then returns garbage weight gradients (norms of 1e31 to inf, measured), and one such step must
    not move the weights. Returns whether the optimiser stepped."""
    norm = torch.nn.utils.clip_grad_norm_(list(parameters), math.inf if grad_clip is None else grad_clip)
    if torch.isfinite(norm) and (skip_grad_norm is None or norm <= skip_grad_norm):
        optimizer.step()
        return True
    return False


class TrainingLoop:
    """Trains ``self.network`` by the config's ``optim`` section; writes everything under ``run_dir``."""

    #: Columns of metrics.csv; subclasses that log more extend it.
    metric_fields: tuple[str, ...] = ("step", "train_loss", "lr", "elapsed_s")
    #: The validation value that picks the exported model (lower is better); None: every validation exports.
    selection_metric: str | None = None
    #: What a run writes in its folder: a run that replaces another removes them first (a distillation's kept
    #: teacher targets are stamped with what they came from, so they stay).
    outputs: tuple[str, ...] = ("config.yaml", "checkpoints", "best", "metrics.csv", "curves.png")

    def __init__(self, config: dict[str, Any], run_dir: str | Path, *, resume: bool = False,
                 overwrite: bool = False, progress: Progress | None = None) -> None:
        """``progress(phase, done, total)`` reports the data preparation before the first step."""
        self.config = config
        self.progress = progress
        if min(config["optim"]["steps"], config["optim"]["batch_size"], config["validate_every"],
               config["checkpoint_every"]) < 1:
            raise ValueError("optim.steps, optim.batch_size, validate_every and checkpoint_every must be at least 1")
        self.run_dir = Path(run_dir)
        self.checkpoint_path = self.run_dir / "checkpoints" / "last.pt"
        if not resume and not overwrite and (self.run_dir / "config.yaml").exists():
            raise FileExistsError(f"{self.run_dir} holds a run already: --resume continues it, --overwrite replaces it")
        self.resuming = resume and self.checkpoint_path.is_file()  # stopped before its first checkpoint: afresh
        self.topology: Topology = init_distributed()
        set_threads(config.get("threads"))
        self.device = self.build_device()
        torch.manual_seed(config["seed"])
        self.setup()
        self.network = self.build_network()
        self.model: nn.Module = self.network
        if self.topology.world_size > 1:
            self.model = DistributedDataParallel(self.network, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.optimizer = self.build_optimizer()
        self.scheduler = self.build_scheduler()
        self.build_data()
        self.step = 0
        self.step_log: dict[str, float] = {}
        self.best_score = math.inf
        self.history: list[dict[str, float]] = []
        #: Seconds of ``fit`` so far, carried across resumes: the ``max_minutes`` budget counts them.
        self.trained_seconds = 0.0
        self.logged: list[dict[str, float]] = []  # the steps' values since the last validation
        if self.resuming:
            self.load_checkpoint(self.checkpoint_path)
        elif self.topology.is_main:
            if overwrite or resume:  # set up without a fault: only now do a replaced (or restarted) run's files go
                remove_outputs(self.run_dir, self.outputs)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(config, self.run_dir / "config.yaml")

    # --- hooks -----------------------------------------------------------------------------------
    def build_device(self) -> torch.device:
        device = resolve_device(self.config["device"])
        if device.type == "cuda" and self.topology.world_size > 1:
            device = torch.device("cuda", self.topology.local_rank)
            torch.cuda.set_device(device)
        return device

    def setup(self) -> None:
        """What the network and data need first (a subclass's own state); nothing by default."""

    def build_network(self) -> nn.Module:
        """The network to train, on ``self.device``."""
        raise NotImplementedError

    def build_optimizer(self) -> torch.optim.Optimizer:
        optim = self.config["optim"]
        return torch.optim.AdamW(self.network.parameters(), lr=optim["lr"], weight_decay=optim["weight_decay"])

    def build_scheduler(self) -> torch.optim.lr_scheduler.LRScheduler:
        optim = self.config["optim"]
        return warmup_cosine(self.optimizer, warmup_steps=optim["warmup_steps"], steps=optim["steps"],
                             min_lr_ratio=optim["min_lr_ratio"])

    def build_data(self) -> None:
        """Load what the batches and validation are drawn from."""
        raise NotImplementedError

    def make_batch(self, step: int) -> Any:
        """The batch of ``step``: a function of (seed, step) alone, so a resumed run sees the same batches."""
        raise NotImplementedError

    def train_step(self, batch: Any) -> float:
        """One optimisation step (``self.optimize(loss)``); returns the loss, more values in ``self.step_log``."""
        raise NotImplementedError

    def finished(self) -> bool:
        """Whether training ends before ``optim.steps`` (a budget counted otherwise); no by default."""
        return False

    def validate(self) -> dict[str, float]:
        """Validation values of the current network (``val_*`` columns); none by default."""
        return {}

    def export(self, folder: Path) -> None:
        """Write the model folder of the current network (``dosepred.models.write_model``)."""
        raise NotImplementedError

    def optimize(self, loss: torch.Tensor) -> None:
        """Back-propagate ``loss``, then ``apply_gradients``."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.apply_gradients()

    def apply_gradients(self) -> None:
        """Clip the optimiser's parameters' gradients and step (skipping garbage gradients, see ``clip_and_step``),
        then move the schedule."""
        optim = self.config["optim"]
        stepped = [parameter for group in self.optimizer.param_groups for parameter in group["params"]]
        if not clip_and_step(self.optimizer, stepped, grad_clip=optim["grad_clip"], skip_grad_norm=optim["skip_grad_norm"]):
            log.warning("step %d: gradient norm not finite or above optim.skip_grad_norm, step skipped", self.step + 1)
        self.scheduler.step()

    # --- state -----------------------------------------------------------------------------------
    def checkpoint_state(self) -> dict[str, Any]:
        """Everything an exact resume needs; subclasses add their own parts."""
        return {
            "model": self.network.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "step": self.step, "best_score": self.best_score,
            "history": self.history, "trained_seconds": self.trained_seconds, "logged": self.logged,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
        }

    def restore_state(self, state: dict[str, Any]) -> None:
        self.network.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]
        self.best_score = state["best_score"]
        self.history = state["history"]
        # A checkpoint from before trained_seconds was kept: its last validation row's time.
        self.trained_seconds = float(state.get("trained_seconds", self.history[-1]["elapsed_s"] if self.history else 0))
        self.logged = state.get("logged", [])  # the steps since the last validation: its train_loss averages them
        torch.set_rng_state(state["torch_rng"].cpu())
        if state["cuda_rng"]:
            torch.cuda.set_rng_state_all([rng.cpu() for rng in state["cuda_rng"]])

    def save_checkpoint(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as tmp:
            torch.save(self.checkpoint_state(), tmp)

    def load_checkpoint(self, path: Path) -> None:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no checkpoint to resume from")
        try:
            self.restore_state(torch.load(path, map_location=self.device, weights_only=True))
        except (RuntimeError, EOFError, KeyError, TypeError, ValueError, OSError, pickle.UnpicklingError) as error:
            raise ValueError(f"{path}: corrupt or incompatible checkpoint ({type(error).__name__})") from None

    # --- loop ------------------------------------------------------------------------------------
    def fit(self, on_step: Callable[[int, dict[str, float]], None] | None = None) -> list[dict[str, float]]:
        """Train to ``optim.steps`` (or to the end of ``optim.max_minutes``), validating, exporting and
        checkpointing on schedule and at the end; returns the metrics history."""
        total = self.config["optim"]["steps"]
        started = time.perf_counter() - self.trained_seconds
        minutes = self.config["optim"]["max_minutes"]
        budget_s = math.inf if minutes is None else 60 * minutes
        if self.finished() or self.trained_seconds > budget_s:  # a resumed run that had already stopped
            return self.history
        while self.step < total:
            loss = self.train_step(self.make_batch(self.step))
            self.step += 1
            self.logged.append({"train_loss": loss, **self.step_log})
            row: dict[str, float] = {"step": self.step, **self.logged[-1], "lr": self.scheduler.get_last_lr()[0]}
            last = (self.step == total or self.finished()
                    or any_rank(time.perf_counter() - started > budget_s, self.topology, self.device))
            if self.step % self.config["validate_every"] == 0 or last:
                means = {key: float(np.mean([entry[key] for entry in self.logged])) for key in self.logged[-1]}
                row = self._log_validation({**row, **means}, time.perf_counter() - started)
                self.logged = []
            if self.step % self.config["checkpoint_every"] == 0 or last:
                self.trained_seconds = time.perf_counter() - started
                if self.topology.is_main:
                    self.save_checkpoint(self.checkpoint_path)
                barrier(self.topology)
            if on_step is not None:
                on_step(self.step, row)
            if last:
                break
        return self.history

    def close(self) -> None:
        """Leave the torchrun process group (a no-op in one process); the trainer cannot train after it."""
        self.model = self.network  # the DDP wrapper holds the group: release it first
        gc.collect()
        leave(self.topology)

    def _log_validation(self, row: dict[str, float], elapsed: float) -> dict[str, float]:
        """Validate (rank 0), record the row (training values averaged since the last one), export the best."""
        if self.topology.is_main:
            row = {**row, **self.validate(), "elapsed_s": elapsed}
            self.history.append(row)
            log.info("step %d: %s", self.step, ", ".join(f"{key} {row[key]:.4g}" for key in row
                                                         if key == "train_loss" or key.startswith("val_")))
            score = row[self.selection_metric] if self.selection_metric else -math.inf
            if score < self.best_score or not self.selection_metric:
                self.best_score = score
                self.export(self.run_dir / "best")
            self.write_metrics()
        barrier(self.topology)
        return row

    def write_metrics(self) -> None:
        """metrics.csv, rewritten after each validation."""
        with open(self.run_dir / "metrics.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.metric_fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows({key: row.get(key, "") for key in self.metric_fields} for row in self.history)
