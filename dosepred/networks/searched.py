"""The searchable U-Net and THE builder from a genotype (plain JSON) to a network.

A genotype lists, per block, its own choices::

    {"encoder": [{"down": "max_pool", "ops": ["conv3", "se_conv3"], "residual": true}, ...],
     "decoder": [{"up": "transposed_conv", "ops": ["sep_conv3", "identity"], "residual": false}, ...]}

Encoder block l downsamples channels[l-1] -> channels[l] (block 0 follows a stem at full size); decoder
block l upsamples back to channels[l], concatenates the skip and fuses it (1^3 conv), then both kinds
apply their two slot operations, with an optional residual connection around them. With ``stem_stride`` 2
the stem halves the grid and the head doubles it again (as MONAI's U-Net does): the searched blocks then
see a 128^3 patient at the 64^3 scale they were searched at, for a seventh of the compute. A slot (or the
resampling) may also hold a list of operations whose outputs are summed: GOLD-NAS's enlarged space.
With ``detached_uncertainty`` a two-channel network's second channel (a distilled student's uncertainty) is
read out of the last features with their gradient stopped: learning it takes no capacity from the dose.

``UNetSpaceNet`` holds, in every slot, a set of candidate operations: one each for a stand-alone network
(``build_network``), all of them for a weight-sharing supernet (``dosepred.nas``). Both name their
parameters alike, so a path's weights move between them unchanged. A ``Gate`` scales each operation's
output (and the residual connection) by a learnt factor while searching.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from dosepred.data.transforms import INPUT_CHANNELS
from dosepred.networks.ops import SLOT_OPS, UP_OPS, conv_norm_act, resampling
from dosepred.networks.registry import register_network

Genotype = dict[str, list[dict[str, Any]]]
#: Per-block candidates: {"encoder": [{"down": [...], "ops": [[...], [...]], "residual": [...]}, ...], ...}
Candidates = dict[str, list[dict[str, Any]]]
#: gate(part, op) -> factor for one block: part is "resample", a slot index or "residual" (op None).
Gate = Callable[[str | int, str | None], torch.Tensor]


def op_names(choice: str | list[str]) -> list[str]:
    """The operations of a slot or resampling choice: one name, or a list of names to sum."""
    return [choice] if isinstance(choice, str) else list(choice)


class SearchBlock(nn.Module):
    """Resample (down or up), then two slots with candidate ops and an optional residual connection."""

    def __init__(self, kind: str, in_channels: int, out_channels: int, candidates: dict[str, Any]) -> None:
        super().__init__()
        self.resample_key, resample_ops = resampling(kind)
        self.resample = nn.ModuleDict({name: resample_ops[name](in_channels, out_channels)
                                       for name in candidates[self.resample_key]})
        self.fuse = conv_norm_act(2 * out_channels, out_channels, kernel=1) if kind == "decoder" else None
        self.slots = nn.ModuleList(nn.ModuleDict({name: SLOT_OPS[name](out_channels) for name in names})
                                   for names in candidates["ops"])

    def forward(self, x: torch.Tensor, choice: dict[str, Any], skip: torch.Tensor | None = None,
                gate: Gate | None = None) -> torch.Tensor:
        def run(ops: nn.ModuleDict, part: str | int, names: str | list[str], value: torch.Tensor) -> torch.Tensor:
            outputs = [ops[name](value) if gate is None else gate(part, name) * ops[name](value) for name in op_names(names)]
            return outputs[0] if len(outputs) == 1 else torch.stack(outputs).sum(dim=0)

        x = run(self.resample, "resample", choice[self.resample_key], x)
        if self.fuse is not None:
            x = self.fuse(torch.cat([x, skip], dim=1))
        out = x
        for index, (slot, names) in enumerate(zip(self.slots, choice["ops"])):
            out = run(slot, index, names, out)
        if not choice["residual"]:
            return out
        return out + (x if gate is None else gate("residual", None) * x)


class UNetSpaceNet(nn.Module):
    """A U-Net over the search space; ``forward(x, genotype)`` runs one path (stand-alone nets know theirs)."""

    def __init__(self, candidates: Candidates, *, channels: Sequence[int], in_channels: int = len(INPUT_CHANNELS),
                 out_channels: int = 1, genotype: Genotype | None = None, stem_stride: int = 1,
                 detached_uncertainty: bool = False) -> None:
        super().__init__()
        depth = len(channels) - 1
        if len(candidates["encoder"]) != depth or len(candidates["decoder"]) != depth:
            raise ValueError(f"{depth} down levels need {depth} encoder and {depth} decoder blocks")
        if stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride!r}")
        if detached_uncertainty and out_channels != 2:
            raise ValueError(f"detached_uncertainty needs two output channels (dose, uncertainty), got {out_channels}")
        self.genotype = genotype
        self.detached_uncertainty = detached_uncertainty
        self.grid_multiple = stem_stride * 2**depth  # the grid edges it takes: the skips must meet the upsampled maps
        self.stem = conv_norm_act(in_channels, channels[0], stride=stem_stride)
        self.encoder = nn.ModuleList(SearchBlock("encoder", channels[i], channels[i + 1], candidates["encoder"][i])
                                     for i in range(depth))
        self.decoder = nn.ModuleList(SearchBlock("decoder", channels[i + 1], channels[i], candidates["decoder"][i])
                                     for i in range(depth))
        head = nn.Conv3d(channels[0], out_channels, 1)
        self.head = head if stem_stride == 1 else nn.Sequential(UP_OPS["transposed_conv"](channels[0], channels[0]), head)

    def forward(self, x: torch.Tensor, genotype: Genotype | None = None,
                gates: Callable[[str, int], Gate] | None = None) -> torch.Tensor:
        """``gates(kind, index)``, when given, is the gate of each block (GOLD-NAS)."""
        genotype = genotype or self.genotype
        if genotype is None:
            raise ValueError("a supernet needs the genotype of the path to run")

        def gate(kind: str, index: int) -> Gate | None:
            return None if gates is None else gates(kind, index)

        skips = [self.stem(x)]
        for index, (block, choice) in enumerate(zip(self.encoder, genotype["encoder"])):
            skips.append(block(skips[-1], choice, gate=gate("encoder", index)))
        x = skips.pop()
        for i in reversed(range(len(self.decoder))):
            x = self.decoder[i](x, genotype["decoder"][i], skip=skips.pop(), gate=gate("decoder", i))
        if not self.detached_uncertainty:
            return self.head(x)
        # The same parameters as the plain head (weights move between the two), the gradient split per channel.
        *upsample, readout = self.head if isinstance(self.head, nn.Sequential) else [self.head]
        for layer in upsample:
            x = layer(x)
        dose = nn.functional.conv3d(x, readout.weight[:1], readout.bias[:1])
        uncertainty = nn.functional.conv3d(x.detach(), readout.weight[1:], readout.bias[1:])
        return torch.cat([dose, uncertainty], dim=1)


def genotype_candidates(genotype: Genotype) -> Candidates:
    """The 'space' holding exactly the operations of one genotype."""
    return {kind: [{key: ([op_names(names) for names in block["ops"]] if key == "ops" else
                          op_names(block[key]) if key in ("down", "up") else [block[key]]) for key in block}
                   for block in blocks] for kind, blocks in genotype.items()}


def validate_genotype(genotype: Genotype, depth: int) -> None:
    """Raise ValueError naming the first problem of a genotype for a U-Net with ``depth`` down levels."""

    def valid(choice: Any, table: dict) -> bool:
        names = [choice] if isinstance(choice, str) else choice
        return (isinstance(names, list) and len(names) >= 1 and len(set(names)) == len(names)
                and all(isinstance(name, str) and name in table for name in names))

    for kind in ("encoder", "decoder"):
        resample, table = resampling(kind)
        blocks = genotype.get(kind)
        if not isinstance(blocks, list) or len(blocks) != depth:
            raise ValueError(f"genotype needs {depth} {kind} blocks")
        for i, block in enumerate(blocks):
            where = f"{kind} block {i}"
            if not valid(block.get(resample), table):
                raise ValueError(f"{where}: {resample} must be one of {sorted(table)} (or a list of them), "
                                 f"got {block.get(resample)!r}")
            ops = block.get("ops")
            if not isinstance(ops, list) or len(ops) != 2 or not all(valid(op, SLOT_OPS) for op in ops):
                raise ValueError(f"{where}: ops must be two of {sorted(SLOT_OPS)} (each may be a list of them), "
                                 f"got {ops!r}")
            if not isinstance(block.get("residual"), bool):
                raise ValueError(f"{where}: residual must be true or false")


def plain_genotype(depth: int) -> Genotype:
    """A residual U-Net of plain 3^3 convolutions: the space's reference architecture."""
    return {"encoder": [{"down": "strided_conv", "ops": ["conv3", "conv3"], "residual": True}] * depth,
            "decoder": [{"up": "transposed_conv", "ops": ["conv3", "conv3"], "residual": True}] * depth}


@register_network("searched")
def build_network(*, genotype: Genotype | None = None, channels: Sequence[int] = (16, 32, 64, 128),
                  in_channels: int = len(INPUT_CHANNELS), out_channels: int = 1, stem_stride: int = 1,
                  detached_uncertainty: bool = False) -> nn.Module:
    """THE builder: a stand-alone network from a genotype (default: ``plain_genotype``); ``stem_stride`` 2 runs
    the blocks at half the input's grid; ``detached_uncertainty`` stops the second channel's gradient at the
    last features."""
    genotype = genotype or plain_genotype(len(channels) - 1)
    validate_genotype(genotype, len(channels) - 1)
    return UNetSpaceNet(genotype_candidates(genotype), channels=channels, in_channels=in_channels,
                        out_channels=out_channels, genotype=genotype, stem_stride=stem_stride,
                        detached_uncertainty=detached_uncertainty)
