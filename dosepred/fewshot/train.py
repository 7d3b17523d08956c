"""Episodic training of the three variants, and the model folder they leave (safetensors + config.json).

* ``protonet``: the ProtoNet loss of each episode (support prototypes, query cross-entropy).
* ``random``: + ``contrastive_weight`` x InfoNCE between two random views of every episode image.
* ``learned``: the same loss with views from a ``ViewGenerator`` trained learning-to-learn: the inner loop is
  one differentiable SGD step of the encoder on the views' InfoNCE loss (``torch.func.functional_call``,
  ``create_graph=True``); the outer loss is the stepped encoder's ProtoNet loss on the episode's (clean)
  queries, back-propagated through that step into the generator. So the generator is rewarded for views whose
  contrastive gradient makes the encoder better at the episode, not for being hard or diverse per se.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from dosepred.fewshot.data import Episode, EpisodeSampler, PatchSet, Progress
from dosepred.fewshot.losses import info_nce, protonet_loss
from dosepred.fewshot.networks import ConvEncoder, ProjectionHead, ViewGenerator
from dosepred.fewshot.views import ViewFamily, apply_views, random_params
from dosepred.models import WEIGHTS_FILE, ModelError, read_model, resolve_model, write_model

METHODS: tuple[str, ...] = ("protonet", "random", "learned")
GENERATOR_FILE = "generator.safetensors"


@dataclass
class FewShotConfig:
    """Training settings; every run folder keeps them in config.json."""

    method: str = "learned"
    steps: int = 1000
    ways: int = 5
    shots: int = 5
    queries: int = 10
    lr: float = 1e-3
    channels: int = 32
    depth: int = 4
    contrastive_weight: float = 0.5
    temperature: float = 0.2
    inner_lr: float = 0.01
    generator_lr: float = 1e-3
    seed: int = 0
    log_every: int = 50
    views: ViewFamily = field(default_factory=ViewFamily)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if isinstance(self.views, dict):
            self.views = ViewFamily(**self.views)


class ContrastiveModel(nn.Module):
    """Encoder and projection head: forward gives the metric embedding and its projection for InfoNCE."""

    def __init__(self, *, channels: int, depth: int, image_size: int) -> None:
        super().__init__()
        self.encoder = ConvEncoder(channels=channels, depth=depth)
        self.head = ProjectionHead(channels * (image_size // 2 ** depth) ** 2)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embeddings = self.encoder(images)
        return embeddings, self.head(embeddings)


@dataclass
class TrainResult:
    model: ContrastiveModel
    generator: ViewGenerator | None
    log: list[dict[str, float]]
    seconds: float


def train(patches: PatchSet, config: FewShotConfig, progress: Progress | None = None) -> TrainResult:
    """Meta-train on episodes of ``patches`` (the base classes) for ``config.steps`` episodes."""
    torch.manual_seed(config.seed)
    rng = torch.Generator().manual_seed(config.seed + 1)
    sampler = EpisodeSampler(patches.labels, ways=config.ways, shots=config.shots, queries=config.queries,
                             seed=config.seed)
    model = ContrastiveModel(channels=config.channels, depth=config.depth, image_size=patches.images.shape[-1])
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    generator = ViewGenerator() if config.method == "learned" else None
    generator_optimizer = torch.optim.Adam(generator.parameters(), lr=config.generator_lr) if generator else None
    model.train()
    log: list[dict[str, float]] = []
    window: list[dict[str, float]] = []
    started = time.perf_counter()
    for step in range(1, config.steps + 1):
        episode = sampler.sample()
        images = patches.images[torch.cat([episode.support, episode.query])]
        optimizer.zero_grad()
        if config.method == "learned":
            assert generator is not None and generator_optimizer is not None
            row = _learned_step(model, generator, generator_optimizer, images, episode, config, rng)
        else:
            row = _episode_loss(model, images, episode, config, rng)
        optimizer.step()
        window.append(row)
        if step % config.log_every == 0 or step == config.steps:
            log.append({"step": step, **{k: sum(r[k] for r in window) / len(window) for k in window[0]}})
            window = []
        if progress is not None:
            progress("train", step, config.steps)
    return TrainResult(model, generator, log, time.perf_counter() - started)


def _split_loss(embeddings: torch.Tensor, episode: Episode) -> tuple[torch.Tensor, torch.Tensor]:
    support, query = embeddings[: len(episode.support)], embeddings[len(episode.support):]
    return protonet_loss(support, episode.support_labels, query, episode.query_labels)


def _episode_loss(model: ContrastiveModel, images: torch.Tensor, episode: Episode, config: FewShotConfig,
                  rng: torch.Generator) -> dict[str, float]:
    """ProtoNet loss, plus InfoNCE on two random views unless the method is plain ProtoNet; back-propagated."""
    loss, accuracy = _split_loss(model(images)[0], episode)
    row = {"proto_loss": loss.item(), "accuracy": accuracy.item()}
    if config.method == "random":
        views = [apply_views(images, random_params(len(images), generator=rng), config.views, generator=rng)
                 for _ in range(2)]
        contrastive = info_nce(*model(torch.cat(views))[1].chunk(2), config.temperature)
        loss = loss + config.contrastive_weight * contrastive
        row["contrastive_loss"] = contrastive.item()
    loss.backward()
    return row


def _learned_step(model: ContrastiveModel, generator: ViewGenerator, generator_optimizer: torch.optim.Optimizer,
                  images: torch.Tensor, episode: Episode, config: FewShotConfig, rng: torch.Generator) -> dict[str, float]:
    """One generator update (inner/outer loop), then the encoder's gradient with the generated views."""
    params = dict(model.named_parameters())
    views = [apply_views(images, generator(images, generator=rng), config.views, generator=rng) for _ in range(2)]
    contrastive = info_nce(*functional_call(model, params, (torch.cat(views),))[1].chunk(2), config.temperature)
    grads = torch.autograd.grad(config.contrastive_weight * contrastive, list(params.values()), create_graph=True)
    stepped = {name: p - config.inner_lr * g for (name, p), g in zip(params.items(), grads)}
    outer, outer_accuracy = _split_loss(functional_call(model, stepped, (images,))[0], episode)
    generator_optimizer.zero_grad()
    outer.backward(inputs=list(generator.parameters()))
    generator_optimizer.step()

    # The encoder's own step: ProtoNet loss on the clean episode + the views' InfoNCE gradient already computed.
    loss, accuracy = _split_loss(model(images)[0], episode)
    loss.backward()
    for p, g in zip(params.values(), grads):
        p.grad = p.grad + g.detach() if p.grad is not None else g.detach()
    return {"proto_loss": loss.item(), "accuracy": accuracy.item(), "contrastive_loss": contrastive.item(),
            "outer_loss": outer.item(), "outer_accuracy": outer_accuracy.item()}


def save_model(result: TrainResult, config: FewShotConfig, folder: Path, *, data: dict[str, Any]) -> None:
    """A few-shot model folder: the encoder (model.safetensors), the view generator (generator.safetensors,
    learned views only), config and the training log."""
    content = {"encoder": {"channels": config.channels, "depth": config.depth}, "data": data,
               "train": asdict(config), "training_seconds": round(result.seconds, 1)}
    weights = {WEIGHTS_FILE: result.model.encoder.state_dict()}
    if result.generator is not None:
        weights[GENERATOR_FILE] = result.generator.state_dict()
    write_model(folder, "fewshot", content, weights, {"log.json": json.dumps(result.log, indent=1) + "\n"})


def load_encoder(folder: str | Path) -> tuple[ConvEncoder, dict[str, Any]]:
    """The encoder of a few-shot model folder or shipped model name (eval mode) and its config.

    Raises:
        ModelError: not a few-shot model folder, or weights that do not fit its config.
    """
    model = read_model(resolve_model(folder), "fewshot")
    try:
        encoder = ConvEncoder(**model.config["encoder"])
        encoder.load_state_dict(model.weights())
    except (KeyError, TypeError, RuntimeError) as error:
        raise ModelError(f"{folder}: invalid few-shot model ({type(error).__name__}: {error})") from None
    return encoder.eval(), model.config
