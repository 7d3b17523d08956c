"""The dose trainer: the training loop's hooks for dose networks (distillation and searched networks build on it).

Batch order and augmentation are functions of (seed, step) alone, so a resumed run ends with the same
weights as one that ran straight through (``dosepred.engine.loop``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dosepred.io import sources
from dosepred.data.augment import Augmentation
from dosepred.data.dataset import PatientSamples
from dosepred.data.transforms import input_channels
from dosepred.devices import fast_path, hardware
from dosepred.engine.loop import TrainingLoop, sample_seed
from dosepred.engine.losses import masked_l1, sorted_dose_l1
from dosepred.inference.predictor import Predictor
from dosepred.metrics import OpenKBPScorer
from dosepred.models import WEIGHTS_FILE, read_model, resolve_model, write_model
from dosepred.networks import create_network


class Trainer(TrainingLoop):
    """Trains ``config['network']`` on ``config['data']``; the best network by validation dose score is exported."""

    metric_fields = ("step", "train_loss", "lr", "val_dose_score", "val_dvh_score", "elapsed_s")
    selection_metric = "val_dose_score"

    def setup(self) -> None:
        self.lineage = self.init_lineage()
        self.loss = self.build_loss()

    def build_network(self) -> nn.Module:
        network = create_network(**self.network_config()).to(self.device)
        multiple, resolution = getattr(network, "grid_multiple", 1), self.config["data"]["resolution"]
        if resolution % multiple:
            raise ValueError(f"data.resolution {resolution} is no multiple of {multiple}, which this network's "
                             "downsampling needs")
        if self.amp:
            network.to(memory_format=torch.channels_last_3d)
        if self.config.get("init") and not self.resuming:
            self.load_init_weights(network)
        return network

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

    def build_data(self) -> None:
        data = self.config["data"]
        self.train_data = PatientSamples.from_source(data["train"], resolution=data["resolution"],
                                                     augmentation=Augmentation.for_data(data),
                                                     beam_angles=data["beam_angles"],
                                                     device=self.device, workers=data["workers"],
                                                     progress=self.progress)
        self.build_validation_paths()

    def build_validation_paths(self) -> None:
        data = self.config["data"]
        self.validation_paths = sources.find_patients(Path(data["validation"]))[: data["max_validation_patients"]]

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

    def validate(self) -> dict[str, float]:
        """OpenKBP dose and DVH scores of the current network on the validation patients (full grid)."""
        predictor = Predictor(self.network, resolution=self.config["data"]["resolution"], device=self.device,
                              amp=self.amp, beam_angles=self.config["data"]["beam_angles"])
        return validation_scores(predictor, self.validation_paths)

    @property
    def amp(self) -> bool:
        return bool(self.config["amp"]) and fast_path(self.device)

    def init_lineage(self) -> list[dict[str, Any]]:
        """The training stages behind the ``init`` model (empty when training from scratch; a resumed run's come
        from its checkpoint, so the ``init`` model may have moved since)."""
        if not self.config.get("init") or self.resuming:
            return []
        self.init_model = read_model(resolve_model(self.config["init"]), "dose")
        return list(self.init_model.config.get("lineage", []))

    def checkpoint_state(self) -> dict[str, Any]:
        return super().checkpoint_state() | {"lineage": self.lineage}

    def restore_state(self, state: dict[str, Any]) -> None:
        super().restore_state(state)
        self.lineage = state["lineage"]

    def load_init_weights(self, network: nn.Module) -> None:
        """Warm start: the network begins with the ``init`` model's weights (same architecture), schedule afresh."""
        weights, own = self.init_model.weights(), network.state_dict()
        unfit = sorted((own.keys() ^ weights.keys()) | {k for k in own.keys() & weights.keys()
                                                        if own[k].shape != weights[k].shape})
        if unfit:
            raise ValueError(f"--init {self.config['init']}: its weights do not fit this network ({len(unfit)} tensors "
                             f"missing, extra or of another shape, e.g. {unfit[0]}): give its network section")
        network.load_state_dict(weights)

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

    def write_metrics(self) -> None:
        super().write_metrics()
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


def validation_scores(predictor: Predictor, paths: list[Path], *, tta: bool = False) -> dict[str, float]:
    """OpenKBP dose and DVH scores of ``predictor`` (with mirroring if ``tta``) on these patients, on their full grid."""
    scorer = OpenKBPScorer()
    for path in paths:
        patient = sources.read_patient(path)
        scorer.add(patient.id, patient.dose, predictor.predict(patient, tta=tta),
                   structures=patient.structure_stack(), possible_dose_mask=patient.possible_dose_mask,
                   voxel_volume_mm3=patient.voxel_volume_mm3)
    return {"val_dose_score": scorer.evaluation.dose_score, "val_dvh_score": scorer.evaluation.dvh_score}
