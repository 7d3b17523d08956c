"""The trainer: a loop of small hook methods that subclasses (distillation, searched nets) override.

Exact resume: batch order and augmentation are functions of (seed, step) alone, and a checkpoint holds
the model, optimiser, scheduler, torch RNG, step and history, so an interrupted and resumed run ends
with the same weights as one that ran straight through.
"""

from __future__ import annotations

import csv
import logging
import math
import pickle
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dosepred.io import sources
from dosepred.data.augment import Augmentation
from dosepred.data.dataset import PatientSamples
from dosepred.data.transforms import input_channels
from dosepred.devices import fast_path, hardware, resolve_device, set_threads
from dosepred.engine.config import save_config
from dosepred.engine.distributed import Topology, any_rank, barrier, init_distributed
from dosepred.engine.losses import masked_l1, sorted_dose_l1
from dosepred.inference.predictor import Predictor
from dosepred.metrics import OpenKBPScorer
from dosepred.models import WEIGHTS_FILE, read_model, resolve_model, write_model
from dosepred.networks import create_network

log = logging.getLogger(__name__)


def sample_seed(seed: int, step: int, position: int) -> int:
    """The augmentation seed of one sample of one step: the same on every rank and after a resume."""
    return int(np.random.SeedSequence([seed, step, position]).generate_state(1)[0])


class Trainer:
    """Trains ``config['network']`` on ``config['data']``; writes everything under ``run_dir``."""

    #: Columns of metrics.csv; subclasses that log more extend it.
    metric_fields: tuple[str, ...] = ("step", "train_loss", "lr", "val_dose_score", "val_dvh_score", "elapsed_s")

    def __init__(self, config: dict[str, Any], run_dir: str | Path, *, resume: bool = False,
                 overwrite: bool = False) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        if not resume and not overwrite and (self.run_dir / "config.yaml").exists():
            raise FileExistsError(f"{self.run_dir} holds a run already: --resume continues it, --overwrite replaces it")
        self.topology: Topology = init_distributed()
        set_threads(config.get("threads"))
        self.device = self.build_device()
        self.lineage = self.init_lineage()
        torch.manual_seed(config["seed"])
        self.network = self.build_network().to(self.device)
        if self.amp:
            self.network.to(memory_format=torch.channels_last_3d)
        if config.get("init") and not resume:
            self.load_init_weights()
        self.model: nn.Module = self.network
        if self.topology.world_size > 1:
            self.model = DistributedDataParallel(self.network, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.loss = self.build_loss()
        self.optimizer = self.build_optimizer()
        self.scheduler = self.build_scheduler()
        self.train_data, self.validation_paths = self.build_data()
        self.step = 0
        self.step_log: dict[str, float] = {}
        self.best_dose_score = math.inf
        self.history: list[dict[str, float]] = []
        self.checkpoint_path = self.run_dir / "checkpoints" / "last.pt"
        if resume:
            self.load_checkpoint(self.checkpoint_path)
        elif self.topology.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(config, self.run_dir / "config.yaml")

    # --- hooks -----------------------------------------------------------------------------------
    def build_device(self) -> torch.device:
        device = resolve_device(self.config["device"])
        if device.type == "cuda" and self.topology.world_size > 1:
            device = torch.device("cuda", self.topology.local_rank)
            torch.cuda.set_device(device)
        return device

    def build_network(self) -> nn.Module:
        return create_network(**self.network_config())

    def network_config(self) -> dict[str, Any]:
        """The network section with the input channels that the data section implies."""
        return {"in_channels": len(input_channels(self.config["data"]["beam_angles"])), **self.config["network"]}

    def build_loss(self) -> Callable[[torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]:
        """Masked L1 of the dose, plus ``loss.dvh_weight`` times the sorted-dose (DVH) L1."""
        dvh_weight = float(self.config["loss"]["dvh_weight"])

        def loss(prediction: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            value = masked_l1(prediction, batch["dose"], batch["possible_dose_mask"])
            if dvh_weight:
                value = value + dvh_weight * sorted_dose_l1(prediction, batch["dose"], batch["structures"])
            return value

        return loss

    def build_optimizer(self) -> torch.optim.Optimizer:
        optim = self.config["optim"]
        return torch.optim.AdamW(self.network.parameters(), lr=optim["lr"], weight_decay=optim["weight_decay"])

    def build_scheduler(self) -> torch.optim.lr_scheduler.LRScheduler:
        """Linear warm-up, then cosine decay to 1% of the peak rate at the last step."""
        warmup, total = self.config["optim"]["warmup_steps"], self.config["optim"]["steps"]

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))

        return torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)

    def build_data(self) -> tuple[PatientSamples, list[Path]]:
        data = self.config["data"]
        augmentation = None
        if data["augment"]:
            angles = data["beam_angles"] or []
            augmentation = Augmentation(beam_rotation_prob=data["beam_rotation"],
                                        beam_step_deg=360 / len(angles) if angles else 40.0)
        train = PatientSamples.from_source(data["train"], resolution=data["resolution"], augmentation=augmentation,
                                           beam_angles=data["beam_angles"], device=self.device, workers=data["workers"])
        validation = sources.find_patients(Path(data["validation"]))[: data["max_validation_patients"]]
        return train, validation

    def batch_indices(self, step: int) -> list[tuple[int, int]]:
        """(sample index, position in the global batch) for this rank at ``step``; epochs reshuffle."""
        size = self.config["optim"]["batch_size"] * self.topology.world_size
        n = len(self.train_data)
        positions = range(step * size, (step + 1) * size)
        order: dict[int, np.ndarray] = {}
        picked = []
        for position in positions:
            epoch = position // n
            if epoch not in order:
                order[epoch] = np.random.default_rng([self.config["seed"], epoch]).permutation(n)
            picked.append((int(order[epoch][position % n]), position))
        return picked[self.topology.rank :: self.topology.world_size]

    def make_batch(self, step: int) -> dict[str, torch.Tensor]:
        picked = self.batch_indices(step)
        batch = self.train_data.batch([index for index, _ in picked],
                                      [sample_seed(self.config["seed"], step, position) for _, position in picked],
                                      self.device)
        if self.amp:
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last_3d)
        return batch

    def train_step(self, batch: dict[str, torch.Tensor]) -> float:
        """One optimisation step; returns the loss. Subclasses may log more in ``self.step_log``."""
        self.model.train()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            prediction = self.model(batch["image"])
        loss = self.loss(prediction.float(), batch)
        self.optimize(loss)
        return float(loss.detach())

    def optimize(self, loss: torch.Tensor) -> None:
        """Back-propagate, clip and step. A step whose gradient norm is not finite or above
        ``optim.skip_grad_norm`` is skipped (as AMP's scaler skips inf steps): on this project's CPU, oneDNN's
        bf16 backward pass now and then returns garbage weight gradients (norms of 1e31 to inf, measured), and
        one such step must not move the weights. The schedule moves on either way."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.config["optim"]["grad_clip"])
        if torch.isfinite(norm) and norm <= self.config["optim"]["skip_grad_norm"]:
            self.optimizer.step()
        else:
            log.warning("step %d: gradient norm %.3g, step skipped", self.step + 1, float(norm))
        self.scheduler.step()

    def validate(self) -> dict[str, float]:
        """OpenKBP dose and DVH scores of the current network on the validation patients (full grid)."""
        predictor = Predictor(self.network, resolution=self.config["data"]["resolution"], device=self.device,
                              amp=self.amp, beam_angles=self.config["data"]["beam_angles"])
        scorer = OpenKBPScorer()
        for path in self.validation_paths:
            patient = sources.read_patient(path)
            scorer.add(patient.id, patient.dose, predictor.predict(patient, tta=False),
                       structures=patient.structure_stack(), possible_dose_mask=patient.possible_dose_mask,
                       voxel_volume_mm3=patient.voxel_volume_mm3)
        return {"val_dose_score": scorer.evaluation.dose_score, "val_dvh_score": scorer.evaluation.dvh_score}

    # --- state -----------------------------------------------------------------------------------
    @property
    def amp(self) -> bool:
        return bool(self.config["amp"]) and fast_path(self.device)

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything an exact resume needs; subclasses add their own parts."""
        return {
            "model": self.network.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "step": self.step, "best_dose_score": self.best_dose_score,
            "history": self.history, "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
        }

    def restore_state(self, state: dict[str, Any]) -> None:
        self.network.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]
        self.best_dose_score = state["best_dose_score"]
        self.history = state["history"]
        torch.set_rng_state(state["torch_rng"].cpu())
        if state["cuda_rng"]:
            torch.cuda.set_rng_state_all([rng.cpu() for rng in state["cuda_rng"]])

    def save_checkpoint(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(self.checkpoint_state(), tmp)
        tmp.replace(path)

    def init_lineage(self) -> list[dict[str, Any]]:
        """The training stages behind the ``init`` model (empty when training from scratch)."""
        if not self.config.get("init"):
            return []
        self.init_model = read_model(resolve_model(self.config["init"]), "dose")
        return list(self.init_model.config.get("lineage", []))

    def load_init_weights(self) -> None:
        """Warm start: the network begins with the ``init`` model's weights (same architecture), schedule afresh."""
        try:
            self.network.load_state_dict(self.init_model.weights())
        except RuntimeError as error:
            raise ValueError(f"--init {self.config['init']}: its weights do not fit this network ({error})") from None

    def load_checkpoint(self, path: Path) -> None:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no checkpoint to resume from")
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
            self.restore_state(state)
        except (RuntimeError, EOFError, KeyError, TypeError, ValueError, pickle.UnpicklingError) as error:
            raise ValueError(f"{path}: corrupt or incompatible checkpoint ({type(error).__name__})") from None

    def export(self, folder: Path) -> None:
        """Write a model folder (weights as safetensors + config) that ``Predictor`` and ``predict`` load."""
        data = self.config["data"]
        stage = {"steps": self.step, "hardware": hardware(self.device), "precision": "bf16" if self.amp else "fp32",
                 "wall_s": round(self.history[-1]["elapsed_s"] if self.history else 0.0, 1),
                 "init": self.config.get("init"), "run": self.run_dir.name}
        model_config = {"network": self.network_config(),
                        "data": {"resolution": data["resolution"], "beam_angles": data["beam_angles"]},
                        "trained_steps": self.step, "lineage": [*self.lineage, stage]}
        write_model(folder, "dose", model_config, {WEIGHTS_FILE: self.network.state_dict()})

    # --- loop ------------------------------------------------------------------------------------
    def fit(self, on_step: Callable[[int, dict[str, float]], None] | None = None) -> list[dict[str, float]]:
        """Train to ``optim.steps``, validating and checkpointing on schedule; returns the metrics history."""
        total = self.config["optim"]["steps"]
        logged: list[dict[str, float]] = []
        started = time.perf_counter() - (self.history[-1]["elapsed_s"] if self.history else 0.0)
        minutes = self.config["optim"]["max_minutes"]
        budget_s = math.inf if minutes is None else 60 * minutes
        while self.step < total:
            loss = self.train_step(self.make_batch(self.step))
            self.step += 1
            logged.append({"train_loss": loss, **self.step_log})
            row: dict[str, float] = {"step": self.step, **logged[-1], "lr": self.scheduler.get_last_lr()[0]}
            last = self.step == total or any_rank(time.perf_counter() - started > budget_s, self.topology, self.device)
            if self.step % self.config["validate_every"] == 0 or last:
                means = {key: float(np.mean([entry[key] for entry in logged])) for key in logged[-1]}
                row = self._log_validation({**row, **means}, time.perf_counter() - started)
                logged = []
            if self.step % self.config["checkpoint_every"] == 0 or last:
                if self.topology.is_main:
                    self.save_checkpoint(self.checkpoint_path)
                barrier(self.topology)
            if on_step is not None:
                on_step(self.step, row)
            if last:
                break
        return self.history

    def _log_validation(self, row: dict[str, float], elapsed: float) -> dict[str, float]:
        """Validate (rank 0), record the row (training values averaged since the last one), export the best."""
        if self.topology.is_main:
            row = {**row, **self.validate(), "elapsed_s": elapsed}
            self.history.append(row)
            log.info("step %d: loss %.4f, validation dose score %.3f Gy, DVH score %.3f Gy", self.step,
                     row["train_loss"], row["val_dose_score"], row["val_dvh_score"])
            if row["val_dose_score"] < self.best_dose_score:
                self.best_dose_score = row["val_dose_score"]
                self.export(self.run_dir / "best")
            self._write_metrics()
        barrier(self.topology)
        return row

    def _write_metrics(self) -> None:
        with open(self.run_dir / "metrics.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.metric_fields)
            writer.writeheader()
            writer.writerows({key: row.get(key, "") for key in self.metric_fields} for row in self.history)
        plot_history(self.history, self.run_dir / "curves.png")


def plot_history(history: list[dict[str, float]], path: Path) -> None:
    """Training loss and validation scores against steps (a bare Figure: no pyplot, no backend change)."""
    from matplotlib.figure import Figure

    steps = [row["step"] for row in history]
    figure = Figure(figsize=(10, 4))
    left, right = figure.subplots(1, 2)
    left.plot(steps, [row["train_loss"] for row in history], marker="o")
    left.set(xlabel="step", ylabel="masked L1 (dose / 70 Gy)", title="training loss")
    right.plot(steps, [row["val_dose_score"] for row in history], marker="o", label="dose score")
    right.plot(steps, [row["val_dvh_score"] for row in history], marker="o", label="DVH score")
    right.set(xlabel="step", ylabel="Gy", title="validation (OpenKBP)")
    right.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
