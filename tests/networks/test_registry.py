from __future__ import annotations

import pytest
import torch

from dosepred.data.transforms import INPUT_CHANNELS
from dosepred.networks import create_network, network_names, register_network


#: The critic judges (input, dose) pairs: one channel more, and it returns its features and patch scores.
CRITICS = {"patch_critic"}


@pytest.mark.parametrize("name", network_names())
def test_every_registered_network_runs_forward_and_backward(name: str) -> None:
    torch.manual_seed(0)
    network = create_network(name)
    size = 32 if name in CRITICS else 16  # the critic's deepest instance norm needs more than one voxel
    image = torch.randn(1, len(INPUT_CHANNELS) + (name in CRITICS), size, size, size)
    output = network(image)
    if name in CRITICS:
        output = output[-1]
        assert output.shape[:2] == (1, 1)
    else:
        assert output.shape == (1, 1, 16, 16, 16)
    output.abs().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in network.parameters() if p.requires_grad)


def test_networks_are_built_from_config() -> None:
    small = create_network("unet", channels=[4, 8], strides=[2], num_res_units=1)
    large = create_network("unet")
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in large.parameters())


def test_unknown_and_duplicate_names() -> None:
    with pytest.raises(KeyError, match="unknown network 'nope'"):
        create_network("nope")
    with pytest.raises(ValueError, match="registered twice"):
        register_network("unet")(lambda: None)
