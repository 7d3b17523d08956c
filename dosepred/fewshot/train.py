"""Episodic training of the three variants through the one training loop, and their model folder (kind ``fewshot``).

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
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from dosepred.devices import hardware
from dosepred.engine.loop import TrainingLoop, sample_seed
from dosepred.fewshot.data import Episode, EpisodeSampler, load_patches
from dosepred.fewshot.losses import info_nce, protonet_loss
from dosepred.fewshot.networks import ConvEncoder, ProjectionHead, ViewGenerator
from dosepred.fewshot.views import ViewFamily, apply_views, random_params
from dosepred.models import WEIGHTS_FILE, ModelError, read_model, resolve_model, write_model

METHODS: tuple[str, ...] = ("protonet", "random", "learned")
GENERATOR_FILE = "generator.safetensors"


class ContrastiveModel(nn.Module):
    """Encoder and projection head: forward gives the metric embedding and its projection for InfoNCE."""

    def __init__(self, *, channels: int, depth: int, image_size: int) -> None:
        super().__init__()
        self.encoder = ConvEncoder(channels=channels, depth=depth)
        self.head = ProjectionHead(channels * (image_size // 2 ** depth) ** 2)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embeddings = self.encoder(images)
        return embeddings, self.head(embeddings)


class FewShotTrainer(TrainingLoop):
    """Meta-training on episodes of the base classes, one episode per step (a function of (seed, step)); the
    ``fewshot`` section of the config chooses the method. ``progress`` reports the patches' extraction."""

    metric_fields = ("step", "train_loss", "lr", "accuracy", "contrastive_loss", "outer_loss", "outer_accuracy",
                     "elapsed_s")

    def setup(self) -> None:
        if self.device.type != "cpu":
            raise ValueError(f"device {self.device.type!r}: few-shot training runs on the CPU only (its episodes and "
                             "views are made there)")
        self.settings = self.config["fewshot"]
        if self.settings["method"] not in METHODS:
            raise ValueError(f"unknown method {self.settings['method']!r}; choose one of {', '.join(METHODS)}")
        size, depth = self.config["data"]["patch_size"], self.settings["depth"]
        if size < 2 ** depth or size % 2 ** depth:
            raise ValueError(f"data.patch_size must be a multiple of {2 ** depth} (the encoder halves it {depth} "
                             f"times), got {size}")
        if self.settings["view_strength"] < 0:
            raise ValueError(f"fewshot.view_strength must be at least 0, got {self.settings['view_strength']}")
        self.views = ViewFamily().scaled(self.settings["view_strength"])

    def build_network(self) -> nn.Module:
        s = self.settings
        # The encoder first: one seed starts every method from the same encoder.
        model = ContrastiveModel(channels=s["channels"], depth=s["depth"], image_size=self.config["data"]["patch_size"])
        self.generator = ViewGenerator().to(self.device) if s["method"] == "learned" else None
        if self.generator is not None:
            self.generator_optimizer = torch.optim.Adam(self.generator.parameters(), lr=s["generator_lr"])
        return model.to(self.device)

    def build_data(self) -> None:
        data, s = self.config["data"], self.settings
        patients = Path(data["patients"]) if data["dataset"] == "ct" else None
        self.patches = load_patches(data["dataset"], patients, novel=False, size=data["patch_size"],
                                    slices=data["slices"], progress=self.progress)
        self.sampler = EpisodeSampler(self.patches.labels, ways=s["ways"], shots=s["shots"], queries=s["queries"])

    def make_batch(self, step: int) -> tuple[torch.Tensor, Episode, torch.Generator]:
        seed = self.config["seed"]
        episode = self.sampler.sample(torch.Generator().manual_seed(sample_seed(seed, step, 0)))
        images = self.patches.images[torch.cat([episode.support, episode.query])].to(self.device)
        return images, episode, torch.Generator().manual_seed(sample_seed(seed, step, 1))

    def train_step(self, batch: tuple[torch.Tensor, Episode, torch.Generator]) -> float:
        images, episode, rng = batch
        self.network.train()
        self.optimizer.zero_grad(set_to_none=True)
        if self.generator is not None:
            row = _learned_step(self.network, self.generator, self.generator_optimizer, images, episode,
                                self.settings, self.views, rng)
        else:
            row = _episode_loss(self.network, images, episode, self.settings, self.views, rng)
        self.apply_gradients()
        self.step_log = {key: value for key, value in row.items() if key != "proto_loss"}
        return row["proto_loss"]

    def checkpoint_state(self) -> dict[str, Any]:
        state = super().checkpoint_state()
        if self.generator is not None:
            state |= {"generator": self.generator.state_dict(), "generator_optimizer": self.generator_optimizer.state_dict()}
        return state

    def restore_state(self, state: dict[str, Any]) -> None:
        super().restore_state(state)
        if self.generator is not None:
            self.generator.load_state_dict(state["generator"])
            self.generator_optimizer.load_state_dict(state["generator_optimizer"])

    def export(self, folder: Path) -> None:
        """model.safetensors (encoder), generator.safetensors (learned views only), config.json, log.json."""
        data = self.config["data"]
        described = {"dataset": data["dataset"], "classes": list(self.patches.classes), "patches": self.patches.counts(),
                     "patch_size": data["patch_size"]}
        if data["dataset"] == "ct":
            described.update(patients=str(data["patients"]), slices=data["slices"])
        content = {"encoder": {"channels": self.settings["channels"], "depth": self.settings["depth"]},
                   "data": described, "train": {**self.settings, "steps": self.step, "seed": self.config["seed"]},
                   "hardware": hardware(self.device), "training_seconds": round(self.history[-1]["elapsed_s"], 1)}
        weights = {WEIGHTS_FILE: self.network.encoder.state_dict()}
        if self.generator is not None:
            weights[GENERATOR_FILE] = self.generator.state_dict()
        write_model(folder, "fewshot", content, weights, {"log.json": json.dumps(self.history, indent=1) + "\n"})


def _split_loss(embeddings: torch.Tensor, episode: Episode) -> tuple[torch.Tensor, torch.Tensor]:
    support, query = embeddings[: len(episode.support)], embeddings[len(episode.support):]
    return protonet_loss(support, episode.support_labels, query, episode.query_labels)


def _episode_loss(model: ContrastiveModel, images: torch.Tensor, episode: Episode, settings: dict[str, Any],
                  views: ViewFamily, rng: torch.Generator) -> dict[str, float]:
    """ProtoNet loss, plus InfoNCE on two random views unless the method is plain ProtoNet; back-propagated."""
    loss, accuracy = _split_loss(model(images)[0], episode)
    row = {"proto_loss": loss.item(), "accuracy": accuracy.item()}
    if settings["method"] == "random":
        viewed = [apply_views(images, random_params(len(images), generator=rng), views, generator=rng)
                  for _ in range(2)]
        contrastive = info_nce(*model(torch.cat(viewed))[1].chunk(2), settings["temperature"])
        loss = loss + settings["contrastive_weight"] * contrastive
        row["contrastive_loss"] = contrastive.item()
    loss.backward()
    return row


def _learned_step(model: ContrastiveModel, generator: ViewGenerator, generator_optimizer: torch.optim.Optimizer,
                  images: torch.Tensor, episode: Episode, settings: dict[str, Any], views: ViewFamily,
                  rng: torch.Generator) -> dict[str, float]:
    """One generator update (inner/outer loop), then the encoder's gradient with the generated views."""
    params = dict(model.named_parameters())
    viewed = [apply_views(images, generator(images, generator=rng), views, generator=rng) for _ in range(2)]
    contrastive = info_nce(*functional_call(model, params, (torch.cat(viewed),))[1].chunk(2), settings["temperature"])
    grads = torch.autograd.grad(settings["contrastive_weight"] * contrastive, list(params.values()), create_graph=True)
    stepped = {name: p - settings["inner_lr"] * g for (name, p), g in zip(params.items(), grads)}
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


def load_encoder(folder: str | Path) -> tuple[ConvEncoder, dict[str, Any]]:
    """The encoder of a few-shot model folder or shipped model name (eval mode) and its config.

    Raises:
        ModelError: not a few-shot model folder, or weights that do not fit its config.
    """
    model = read_model(resolve_model(folder), "fewshot")
    try:
        encoder = model.fitted(lambda: ConvEncoder(**model.config["encoder"]))
    except (KeyError, TypeError, RuntimeError) as error:
        raise ModelError(f"{folder}: invalid few-shot model ({type(error).__name__}: {error})") from None
    return encoder.eval(), model.config
