"""Episode accuracy on novel classes: mean and 95% confidence interval (1.96 std / sqrt(n)) over fixed episodes."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from dosepred.fewshot.data import EpisodeSampler, PatchSet
from dosepred.fewshot.losses import prototypes, proto_logits
from dosepred.progress import Progress


@dataclass(frozen=True)
class Accuracy:
    mean: float
    ci95: float
    episodes: int

    def __str__(self) -> str:
        return f"{100 * self.mean:.2f} ± {100 * self.ci95:.2f}"


@torch.no_grad()
def embed(encoder: nn.Module, images: torch.Tensor, *, batch_size: int = 512) -> torch.Tensor:
    """Embeddings of all images with the encoder in eval mode (BatchNorm running statistics)."""
    encoder.eval()
    return torch.cat([encoder(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


def evaluate(encoder: nn.Module, patches: PatchSet, *, ways: int, shots: int, queries: int = 15,
             episodes: int = 600, seed: int = 0, progress: Progress | None = None) -> Accuracy:
    """Nearest-prototype accuracy over ``episodes`` episodes; the same seed gives the same episodes to every model.
    A class's queries come from other patients (groups) than its support."""
    embeddings = embed(encoder, patches.images)
    sampler = EpisodeSampler(patches.labels, ways=ways, shots=shots, queries=queries, seed=seed, groups=patches.groups)
    scores = torch.empty(episodes)
    for i in range(episodes):
        episode = sampler.sample()
        logits = proto_logits(embeddings[episode.query], prototypes(embeddings[episode.support], episode.support_labels, ways))
        scores[i] = (logits.argmax(1) == episode.query_labels).float().mean()
        if progress is not None:
            progress(f"{ways}-way {shots}-shot", i + 1, episodes)
    return Accuracy(scores.mean().item(), 1.96 * scores.std().item() / math.sqrt(episodes), episodes)
