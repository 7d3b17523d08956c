"""Zero-cost proxies: finite, oriented, and each a function of the network and the batch alone."""

from __future__ import annotations

import torch

from dosepred.nas.proxies import PROXIES, grad_norm, parameters, snip, synflow
from dosepred.nas.space import SearchSpace
from dosepred.networks.searched import build_network


def batch(size: int = 16) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    mask = torch.zeros(2, 1, size, size, size)
    mask[:, :, 4:12, 4:12, 4:12] = 1
    return {"image": torch.randn(2, 10, size, size, size, generator=generator),
            "dose": torch.rand(2, 1, size, size, size, generator=generator) * mask, "possible_dose_mask": mask}


def test_proxies_are_finite_positive_and_repeatable() -> None:
    space = SearchSpace((4, 8, 16, 32))
    data = batch()
    torch.manual_seed(0)
    network = build_network(genotype=space.reference(), channels=space.channels, in_channels=10)
    assert parameters(network, data) == sum(p.numel() for p in network.parameters())
    values = {name: proxy(network, data) for name, proxy in PROXIES.items()}
    assert all(value > 0 and torch.isfinite(torch.tensor(value)) for value in values.values())
    assert grad_norm(network, data) == values["grad_norm"] and snip(network, data) == values["snip"]  # no state kept


def test_a_network_without_convolutions_in_its_slots_has_fewer_parameters() -> None:
    space = SearchSpace((4, 8, 16, 32))
    bare = space.reference()
    for kind in ("encoder", "decoder"):
        for block in bare[kind]:
            block["ops"] = ["identity", "identity"]
    data = batch()
    full = build_network(genotype=space.reference(), channels=space.channels, in_channels=10)
    empty = build_network(genotype=bare, channels=space.channels, in_channels=10)
    assert parameters(empty, data) < parameters(full, data)


def test_synflow_is_data_free_leaves_the_network_alone_and_grows_with_width() -> None:
    space = SearchSpace((4, 8, 16, 32))
    torch.manual_seed(0)
    network = build_network(genotype=space.reference(), channels=space.channels, in_channels=10)
    weights = [p.clone() for p in network.parameters()]
    value = synflow(network, batch())
    assert all(torch.equal(a, b) for a, b in zip(weights, network.parameters()))
    assert all(p.grad is None for p in network.parameters())
    noisier = {**batch(), "image": batch()["image"] * 5 + 1}
    assert synflow(network, noisier) == value  # only the input's shape matters
    wider = build_network(genotype=space.reference(), channels=(8, 16, 32, 64), in_channels=10)
    assert synflow(wider, batch()) > value
