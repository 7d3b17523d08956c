"""Train a BLC detector on slices; its model folder (``dosepred.models``, kind ``detector``)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from dosepred.detection.data import Progress, SliceSet, network_input
from dosepred.detection.detector import BLCDetector
from dosepred.detection.embeddings import load_embeddings
from dosepred.detection.network import DetectorConfig
from dosepred.models import WEIGHTS_FILE, ModelError, read_model, resolve_model, write_model

LOG = "log.json"


def train_detector(slices: SliceSet, config: DetectorConfig, *, steps: int = 1200, batch_size: int = 8,
                   learning_rate: float = 1e-3, warmup: int = 100, seed: int = 0, log_every: int = 50,
                   progress: Progress | None = None) -> tuple[BLCDetector, list[dict[str, float]]]:
    """AdamW with linear warm-up then cosine decay, random batches of slices; returns the detector and its loss log."""
    torch.manual_seed(seed)
    classes, background = load_embeddings()
    detector = BLCDetector(config, classes, background)
    optimizer = torch.optim.AdamW(detector.parameters(), lr=learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup)
                                                 * 0.5 * (1 + math.cos(math.pi * step / steps)))
    batches = torch.Generator().manual_seed(seed)
    log, running, start = [], {}, time.perf_counter()
    detector.train()
    for step in range(1, steps + 1):
        chosen = torch.randint(len(slices), (batch_size,), generator=batches)
        losses = detector.losses(network_input(slices.images[chosen]),
                                 [(slices.boxes[i], slices.labels[i]) for i in chosen.tolist()])
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(detector.parameters(), 10.0)
        optimizer.step()
        schedule.step()
        for name, value in losses.items():
            running[name] = running.get(name, 0.0) + value.item() / log_every
        if step % log_every == 0 or step == steps:
            log.append({"step": step, "seconds": round(time.perf_counter() - start, 1),
                        **{name: round(value, 5) for name, value in running.items()}})
            running = {}
        if progress:
            progress("training", step, steps)
    return detector.eval(), log


def save_detector(detector: BLCDetector, folder: Path, training: dict | None = None,
                  log: list[dict[str, float]] | None = None) -> None:
    """A detector model folder: weights, config (settings + training record) and the loss log."""
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
        detector = BLCDetector(DetectorConfig.from_dict(model.config["detector"]), weights["class_embeddings"],
                               weights["background"])
        detector.load_state_dict(weights)
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise ModelError(f"{folder}: invalid detector model ({type(error).__name__}: {error})") from None
    return detector.eval()
