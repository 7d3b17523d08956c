"""Exact loss values on hand-made embeddings, and the views' geometry."""

from __future__ import annotations

import math

import pytest
import torch

from dosepred.fewshot.losses import info_nce, protonet_loss, prototypes
from dosepred.fewshot.views import ViewFamily, apply_views, random_params


def test_fewshot_prototypes_are_class_means() -> None:
    support = torch.tensor([[0.0, 0.0], [2.0, 2.0], [4.0, 0.0], [6.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 1])
    assert torch.equal(prototypes(support, labels, 2), torch.tensor([[1.0, 1.0], [5.0, 0.0]]))


def test_fewshot_protonet_loss_exact() -> None:
    support = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    query = torch.tensor([[0.0, 0.0], [3.0, 0.0], [1.0, 1.0]])
    # Squared distances (0, 4), (9, 1) and (2, 2): the last is a tie, which argmax gives to class 0 (wrong).
    loss, accuracy = protonet_loss(support, torch.tensor([0, 1]), query, torch.tensor([0, 1, 1]))
    expected = (math.log(1 + math.exp(-4)) + math.log(1 + math.exp(-8)) + math.log(2)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert accuracy.item() == pytest.approx(2 / 3)


def test_fewshot_info_nce_exact() -> None:
    first = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # Each anchor: its positive at cosine 1, two negatives at cosine 0 (one of them the other view's twin).
    expected = -math.log(math.exp(2.0) / (math.exp(2.0) + 2.0))
    assert info_nce(first, first.clone(), temperature=0.5).item() == pytest.approx(expected, rel=1e-6)
    assert info_nce(3 * first, first, temperature=0.5).item() == pytest.approx(expected, rel=1e-6)
    # Swapping the positives: each positive is orthogonal (cos 0) and one negative identical (cos 1).
    swapped = info_nce(first, first.flip(0), temperature=0.5).item()
    assert swapped == pytest.approx(math.log(2.0 + math.exp(2.0)), rel=1e-6)


def test_fewshot_views_identity_and_rotation() -> None:
    images = torch.rand(2, 1, 8, 8)
    identity = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0]]).repeat(2, 1)
    assert torch.allclose(apply_views(images, identity), images, atol=1e-5)
    quarter = identity.clone()
    quarter[:, 0] = 1.0
    rotated = apply_views(images, quarter, ViewFamily(rotation_deg=90.0))
    turns = [torch.rot90(images, k, dims=(2, 3)) for k in (1, -1)]
    assert any(torch.allclose(rotated, turn, atol=1e-5) for turn in turns)
    assert not torch.allclose(rotated, images.flip(3), atol=1e-3)


def test_fewshot_random_views_stay_in_bounds() -> None:
    params = random_params(1000, generator=torch.Generator().manual_seed(0))
    assert params.shape == (1000, 7) and params.abs().max() <= 1.0 and params.std(0).min() > 0.5
    images = torch.ones(4, 1, 16, 16) * 0.5
    gain = torch.zeros(4, 7)
    gain[:, 4], gain[:, 6] = 1.0, -1.0
    assert torch.allclose(apply_views(images, gain, ViewFamily(gain=0.2))[..., 6:10, 6:10], torch.full((4, 1, 4, 4), 0.6))


def test_fewshot_view_strength_zero_is_the_identity() -> None:
    images = torch.rand(3, 1, 16, 16)
    params = random_params(3, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(apply_views(images, params, ViewFamily().scaled(0.0)), images, atol=1e-5)
    assert not torch.allclose(apply_views(images, params, ViewFamily().scaled(0.5)), images, atol=1e-2)
    assert ViewFamily().scaled(0.5).scale == pytest.approx(1.2 ** 0.5)
