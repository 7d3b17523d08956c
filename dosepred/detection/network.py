"""The detector's parts: residual backbone + feature pyramid (MONAI blocks), the RPN head, the semantic cascade stages."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from monai.networks.blocks import FeaturePyramidNetwork, ResidualUnit
from torch import nn


#: Cascade R-CNN's regression weights, one per stage: later stages see better boxes, so their deltas are scaled up.
STAGE_BOX_WEIGHTS = ((10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0))


@dataclass(frozen=True)
class DetectorConfig:
    """Everything that fixes the network's shape and its training targets; saved beside the weights."""

    blrpn: bool = True  # learnt background embedding in the RPN (False: binary objectness, fixed background word)
    semantic_flow: bool = True  # each cascade stage's semantic output feeds the next stage's
    widths: tuple[int, ...] = (16, 32, 64, 96, 128)  # stem, then stages at strides 2, 4, 8, 16
    pyramid_channels: int = 64
    anchor_sizes: tuple[float, ...] = (4.0, 8.0, 16.0, 32.0)  # structures span 2 to 60 pixels at about 4 mm a pixel
    ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    image_size: int = 128
    stage_ious: tuple[float, ...] = (0.5, 0.6, 0.7)
    stage_loss_weights: tuple[float, ...] = (1.0, 0.5, 0.25)
    head_dim: int = 256
    roi_size: int = 7
    rpn_pre_nms: int = 250  # best anchors per level before NMS
    rpn_post_nms: int = 300
    rpn_nms: float = 0.7
    rpn_batch: int = 256
    roi_batch: int = 128
    detections_per_image: int = 100
    class_nms: float = 0.5

    def __post_init__(self) -> None:
        stages = len(self.stage_ious)
        if not 1 <= stages <= len(STAGE_BOX_WEIGHTS) or len(self.stage_loss_weights) != stages:
            raise ValueError(f"stage_ious and stage_loss_weights: one entry per cascade stage, 1 to "
                             f"{len(STAGE_BOX_WEIGHTS)} stages (got {stages} and {len(self.stage_loss_weights)})")
        if len(self.widths) < 2 or any(width < 8 or width % 8 for width in self.widths):
            raise ValueError(f"widths: a stem and at least one stage, each a multiple of 8 (group norm's 8 groups), "
                             f"got {list(self.widths)}")
        if len(self.anchor_sizes) != len(self.widths) - 1:
            raise ValueError(f"anchor_sizes: one per pyramid level, i.e. per stage after the stem ({len(self.widths) - 1}"
                             f"), got {len(self.anchor_sizes)}")
        if self.image_size < 1 or self.image_size % self.strides[-1]:
            raise ValueError(f"image_size must be a multiple of the coarsest stride {self.strides[-1]}, "
                             f"got {self.image_size}")

    @property
    def strides(self) -> tuple[int, ...]:
        return tuple(2 ** (level + 1) for level in range(len(self.widths) - 1))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> DetectorConfig:
        unknown = set(values) - {field.name for field in fields(cls)}
        if unknown:
            raise ValueError(f"unknown detector setting(s) {sorted(unknown)}")
        return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in values.items()})


class Backbone(nn.Module):
    """Residual stages at strides 2..16 and a feature pyramid over them (one map per anchor size)."""

    def __init__(self, config: DetectorConfig, in_channels: int) -> None:
        super().__init__()
        widths = config.widths
        self.stem = ResidualUnit(2, in_channels, widths[0], strides=1, subunits=1, act="RELU", norm=("GROUP", {"num_groups": 8}))
        self.stages = nn.ModuleList(
            ResidualUnit(2, widths[index], widths[index + 1], strides=2, subunits=2, act="RELU",
                         norm=("GROUP", {"num_groups": 8}))
            for index in range(len(widths) - 1))
        self.pyramid = FeaturePyramidNetwork(2, list(widths[1:]), config.pyramid_channels)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(images)
        levels = OrderedDict()
        for index, stage in enumerate(self.stages):
            x = stage(x)
            levels[str(index)] = x
        return list(self.pyramid(levels).values())


def cosine_logits(embedded: torch.Tensor, classes: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Scaled cosine similarity of region embeddings (…, d) with class embeddings (K, d): the zero-shot classifier."""
    return log_scale.exp() * F.normalize(embedded, dim=-1) @ F.normalize(classes, dim=-1).T


class RPNHead(nn.Module):
    """Per anchor: box deltas and either an objectness logit or (BLRPN) an embedding in the semantic space."""

    def __init__(self, config: DetectorConfig, semantic_dim: int) -> None:
        super().__init__()
        channels, anchors = config.pyramid_channels, len(config.ratios)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.deltas = nn.Conv2d(channels, anchors * 4, 1)
        self.anchors = anchors
        self.semantic_dim = semantic_dim
        # BLRPN embeds only the anchors being scored (a linear map of their position's feature), since a
        # semantic vector for every anchor of the finest level would cost hundreds of MB per batch.
        self.embed = nn.Linear(channels, anchors * semantic_dim) if config.blrpn else None
        self.objectness = None if config.blrpn else nn.Conv2d(channels, anchors, 1)
        for layer in (self.conv, self.deltas, *(m for m in (self.objectness,) if m is not None)):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, levels: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(position features B x P x C, deltas B x (P·A) x 4, objectness logits B x (P·A) or None), levels concatenated."""
        features, deltas, objectness = [], [], []
        for level in levels:
            hidden = F.relu(self.conv(level))
            features.append(hidden.flatten(2).transpose(1, 2))
            deltas.append(self.deltas(hidden).permute(0, 2, 3, 1).reshape(len(level), -1, 4))
            if self.objectness is not None:
                objectness.append(self.objectness(hidden).permute(0, 2, 3, 1).reshape(len(level), -1))
        return torch.cat(features, 1), torch.cat(deltas, 1), torch.cat(objectness, 1) if objectness else None

    def all_anchor_logits(self, features: torch.Tensor, classes: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
        """``cosine_logits`` of every anchor of one image (P·A x K) without materialising their embeddings.

        With f' = (f, 1) and W' = (W, b) per anchor, e·W'f' = f'·(W'ᵀe) and |W'f'|² = f'ᵀ(W'ᵀW')f', both cheap.
        """
        weight = torch.cat([self.embed.weight.view(self.anchors, self.semantic_dim, -1),
                            self.embed.bias.view(self.anchors, self.semantic_dim, 1)], dim=2)
        augmented = torch.cat([features, features.new_ones(len(features), 1)], dim=1)
        dots = augmented @ torch.einsum("adc,kd->cak", weight, F.normalize(classes, dim=-1)).flatten(1)
        gram = torch.einsum("adc,ade->ace", weight, weight)
        norms = torch.einsum("pc,ace,pe->pa", augmented, gram, augmented).clamp(min=1e-24).sqrt()
        logits = log_scale.exp() * dots.view(len(features), self.anchors, -1) / norms[..., None]
        return logits.reshape(-1, len(classes))

    def anchor_embeddings(self, features: torch.Tensor, anchor_index: torch.Tensor) -> torch.Tensor:
        """Semantic embeddings of the anchors ``anchor_index`` (into the P·A anchors) of one image's features (P x C)."""
        position, anchor = anchor_index // self.anchors, anchor_index % self.anchors
        embedded = self.embed(features[position]).view(-1, self.anchors, self.semantic_dim)
        return embedded[torch.arange(len(anchor_index)), anchor]


class SemanticStage(nn.Module):
    """One cascade stage: a box head, class-agnostic box regression and a projection into the semantic space.

    With the semantic flow, the stage adds a learnt map of the previous stage's semantic output for the same
    regions to its own, so the visual-semantic alignment is refined stage by stage.
    """

    def __init__(self, config: DetectorConfig, semantic_dim: int, receives_flow: bool) -> None:
        super().__init__()
        flat = config.pyramid_channels * config.roi_size ** 2
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(flat, config.head_dim), nn.ReLU(),
                                  nn.Linear(config.head_dim, config.head_dim), nn.ReLU())
        self.regress = nn.Linear(config.head_dim, 4)
        self.project = nn.Linear(config.head_dim, semantic_dim)
        self.flow = nn.Linear(semantic_dim, semantic_dim) if receives_flow else None
        self.log_scale = nn.Parameter(torch.tensor(2.3))  # exp(2.3) ~ 10: a softmax temperature for cosines
        nn.init.normal_(self.regress.weight, std=0.001)
        nn.init.zeros_(self.regress.bias)

    def forward(self, roi_features: torch.Tensor, previous_semantic: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(box deltas R x 4, semantic embeddings R x d)."""
        hidden = self.head(roi_features)
        semantic = self.project(hidden)
        if self.flow is not None and previous_semantic is not None:
            semantic = semantic + self.flow(previous_semantic)
        return self.regress(hidden), semantic
