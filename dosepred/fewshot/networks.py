"""The few-shot networks: a Conv-4 encoder, the projection head of the contrastive loss, the view generator."""

from __future__ import annotations

import torch
from torch import nn

from dosepred.fewshot.views import N_PARAMS


class ConvEncoder(nn.Module):
    """Conv-4 of metric few-shot learning: ``depth`` blocks of conv3x3-BN-ReLU-maxpool, flattened."""

    def __init__(self, *, channels: int = 32, depth: int = 4, in_channels: int = 1) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        for i in range(depth):
            blocks += [nn.Conv2d(in_channels if i == 0 else channels, channels, 3, padding=1),
                       nn.BatchNorm2d(channels), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        self.body = nn.Sequential(*blocks)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images).flatten(1)


class ProjectionHead(nn.Module):
    """The MLP the InfoNCE loss sees (SimCLR): keeps the contrastive pressure off the metric space itself."""

    def __init__(self, features: int, out_features: int = 64) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(features, features), nn.ReLU(inplace=True), nn.Linear(features, out_features))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.mlp(embeddings)


class ViewGenerator(nn.Module):
    """Per-image view parameters in [-1, 1] from the image and a noise code (so two views of one image differ)."""

    def __init__(self, *, in_channels: int = 1, width: int = 16, noise_dim: int = 8) -> None:
        super().__init__()
        self.noise_dim = noise_dim
        self.features = nn.Sequential(nn.Conv2d(in_channels, width // 2, 3, stride=2, padding=1), nn.ReLU(),
                                      nn.Conv2d(width // 2, width, 3, stride=2, padding=1), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(width + noise_dim, 32), nn.ReLU(), nn.Linear(32, N_PARAMS), nn.Tanh())

    def forward(self, images: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(len(images), self.noise_dim, generator=generator, dtype=images.dtype)
        return self.head(torch.cat([self.features(images), noise], dim=1))
