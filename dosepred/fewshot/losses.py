"""The ProtoNet episode loss (squared Euclidean distance to class means) and InfoNCE with in-batch negatives."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def prototypes(support: torch.Tensor, labels: torch.Tensor, ways: int) -> torch.Tensor:
    """The mean support embedding of each episode class, (ways, D)."""
    one_hot = F.one_hot(labels, ways).to(support.dtype)
    return one_hot.T @ support / one_hot.sum(0, keepdim=True).T


def proto_logits(query: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """Negative squared Euclidean distances, (Q, ways)."""
    return -torch.cdist(query, protos).pow(2)


def protonet_loss(support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor,
                  query_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of the queries over the prototypes, and the query accuracy."""
    ways = int(support_labels.max()) + 1
    logits = proto_logits(query, prototypes(support, support_labels, ways))
    return F.cross_entropy(logits, query_labels), (logits.argmax(1) == query_labels).float().mean()


def info_nce(first: torch.Tensor, second: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """NT-Xent (SimCLR): item i of ``first`` and of ``second`` are two views of one image, every other view
    in the batch is a negative; cosine similarity over ``temperature``, averaged over all 2B anchors."""
    z = F.normalize(torch.cat([first, second]), dim=1)
    similarity = z @ z.T / temperature
    similarity = similarity.masked_fill(torch.eye(len(z), dtype=torch.bool), float("-inf"))
    count = len(first)
    targets = torch.cat([torch.arange(count, 2 * count), torch.arange(count)])
    return F.cross_entropy(similarity, targets)
