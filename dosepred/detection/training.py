"""Training the BLC detector through the one training loop; its model folder (``dosepred.models``, kind ``detector``)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from dosepred.detection.data import SliceSet, network_input
from dosepred.detection.detector import BLCDetector
from dosepred.detection.embeddings import load_embeddings
from dosepred.detection.network import DetectorConfig
from dosepred.devices import hardware
from dosepred.engine.loop import TrainingLoop, sample_seed
from dosepred.models import WEIGHTS_FILE, ModelError, read_model, resolve_model, write_model

LOG = "log.json"


class DetectorTrainer(TrainingLoop):
    """Random batches of training slices (a function of (seed, step)); every validation row exports the model.

    ``progress(phase, done, total)`` reports the slices' extraction, which takes minutes on the full set.
    """

    def setup(self) -> None:
        if self.device.type != "cpu":
            raise ValueError(f"device {self.device.type!r}: the detector trains on the CPU only (its box targets are "
                             "made there)")
        if self.config["data"]["slice_step"] < 1:
            raise ValueError("data.slice_step must be at least 1")
        try:
            self.detector_config = DetectorConfig.from_dict(self.config["detector"])
        except (TypeError, ValueError) as error:
            raise ValueError(f"detector: {error}") from None
        stages = [f"stage{t + 1}_{part}" for t in range(len(self.detector_config.stage_ious)) for part in ("class", "box")]
        self.metric_fields = ("step", "train_loss", "lr", "rpn_class", "rpn_box", *stages, "elapsed_s")

    def build_network(self) -> nn.Module:
        classes, background = load_embeddings()
        return BLCDetector(self.detector_config, classes, background).to(self.device)

    def build_data(self) -> None:
        data = self.config["data"]
        self.slices = SliceSet.from_source(Path(data["train"]), slice_step=data["slice_step"], progress=self.progress)
        if len(self.slices) == 0:
            raise ValueError(f"{data['train']}: no slice holds a structure")

    def make_batch(self, step: int) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        draw = torch.Generator().manual_seed(sample_seed(self.config["seed"], step, 0))
        chosen = torch.randint(len(self.slices), (self.config["optim"]["batch_size"],), generator=draw).tolist()
        images = network_input(self.slices.images[chosen]).to(self.device)
        return images, [(self.slices.boxes[i].to(self.device), self.slices.labels[i].to(self.device)) for i in chosen]

    def train_step(self, batch: tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]) -> float:
        self.network.train()
        losses = self.network.losses(*batch)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {self.step + 1}")
        self.optimize(loss)
        self.step_log = {name: float(value.detach()) for name, value in losses.items()}
        return float(loss.detach())

    def export(self, folder: Path) -> None:
        training = {"data": str(self.config["data"]["train"]), "slices": len(self.slices), "steps": self.step,
                    "hardware": hardware(self.device), "minutes": round(self.history[-1]["elapsed_s"] / 60, 1),
                    "run": self.run_dir.name}
        save_detector(self.network, folder, training, self.history)


def save_detector(detector: BLCDetector, folder: Path, training: dict | None = None,
                  log: list[dict[str, float]] | None = None) -> None:
    """A detector model folder: weights, config (settings + training record) and the training log."""
    write_model(folder, "detector", {"detector": detector.config.to_dict(), "training": training or {}},
                {WEIGHTS_FILE: detector.state_dict()}, {LOG: json.dumps(log or [], indent=1) + "\n"})


def load_detector(folder: str | Path) -> BLCDetector:
    """The detector of a model folder or shipped model name (eval mode).

    Raises:
        ModelError: not a detector model folder, or weights that do not fit its config.
    """
    model = read_model(resolve_model(folder), "detector")
    weights = model.weights()
    try:
        config = DetectorConfig.from_dict(model.config["detector"])
        detector = model.fitted(lambda: BLCDetector(config, weights["class_embeddings"], weights["background"]),
                                 weights=weights)
    except ModelError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise ModelError(f"{folder}: invalid detector model ({type(error).__name__}: {error})") from None
    return detector.eval()
