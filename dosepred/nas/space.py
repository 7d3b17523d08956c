"""The search space: per-block choices of the U-shaped network, sampling, enumeration and size.

Every encoder and decoder block chooses for itself (unlike the public LE-NAS code, which shares one
choice across all down blocks and one across all up blocks): two slot operations, a residual connection
on or off, and its downsampling (encoder) or upsampling (decoder) operation.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from dosepred.data.transforms import INPUT_CHANNELS, input_channels
from dosepred.networks.ops import DOWN_OPS, SLOT_OPS, UP_OPS, resampling
from dosepred.networks.searched import Candidates, Genotype, plain_genotype

BlockRef = tuple[str, int]  # ("encoder" | "decoder", index)


@dataclass(frozen=True)
class SearchSpace:
    """A U-Net with ``len(channels) - 1`` down levels; every block picks from the full op tables. The supernet
    takes ``in_channels`` input channels (beam-aware inputs have more) and with ``stem_stride`` 2 runs its blocks
    at half the input's grid, as the stand-alone networks built with it (``build_network``)."""

    channels: tuple[int, ...] = (16, 32, 64, 128)
    in_channels: int = len(INPUT_CHANNELS)
    stem_stride: int = 1

    @classmethod
    def from_config(cls, config: dict) -> SearchSpace:
        """The space of a search config: its ``search.channels`` and ``search.stem_stride``, taking the inputs its
        ``data`` section gives."""
        return cls(tuple(config["search"]["channels"]), in_channels=len(input_channels(config["data"]["beam_angles"])),
                   stem_stride=config["search"]["stem_stride"])

    @property
    def depth(self) -> int:
        return len(self.channels) - 1

    @property
    def blocks(self) -> list[BlockRef]:
        return [("encoder", i) for i in range(self.depth)] + [("decoder", i) for i in range(self.depth)]

    def candidates(self) -> Candidates:
        """Every op in every slot: the supernet's contents."""
        slots = [list(SLOT_OPS), list(SLOT_OPS)]
        return {"encoder": [{"down": list(DOWN_OPS), "ops": slots, "residual": [False, True]}] * self.depth,
                "decoder": [{"up": list(UP_OPS), "ops": slots, "residual": [False, True]}] * self.depth}

    def block_choices(self, kind: str) -> list[dict[str, object]]:
        """All choices of one block, in a fixed order."""
        resample_key, table = resampling(kind)
        return [{resample_key: resample, "ops": [a, b], "residual": residual}
                for resample, a, b, residual in itertools.product(table, SLOT_OPS, SLOT_OPS, (False, True))]

    def size(self) -> int:
        """The number of distinct architectures."""
        return math.prod(len(self.block_choices(kind)) for kind, _ in self.blocks)

    def reference(self) -> Genotype:
        return plain_genotype(self.depth)

    def sample(self, rng: np.random.Generator) -> Genotype:
        """A uniformly random architecture (each block independently)."""
        genotype: Genotype = {"encoder": [], "decoder": []}
        for kind, _ in self.blocks:
            choices = self.block_choices(kind)
            genotype[kind].append(copy.deepcopy(choices[rng.integers(len(choices))]))
        return genotype

    def fair_paths(self, rng: np.random.Generator) -> list[Genotype]:
        """FairNAS's strict fairness: ``len(SLOT_OPS)`` architectures that together use every slot operation of
        every block exactly once (each slot a random permutation); the resampling ops and the residual setting
        cycle through a random order of their fewer options, so each is used as evenly as the count allows."""
        count = len(SLOT_OPS)

        def cycled(options: list) -> list:
            order = [options[i] for i in rng.permutation(len(options))]
            return [order[i % len(order)] for i in range(count)]

        paths: list[Genotype] = [{"encoder": [], "decoder": []} for _ in range(count)]
        for kind, _ in self.blocks:
            resample_key, table = resampling(kind)
            choices = zip(cycled(list(table)), cycled(list(SLOT_OPS)), cycled(list(SLOT_OPS)), cycled([False, True]))
            for path, (resample, a, b, residual) in zip(paths, choices):
                path[kind].append({resample_key: resample, "ops": [a, b], "residual": residual})
        return paths

    def neighbours(self, genotype: Genotype, block: BlockRef) -> Iterator[Genotype]:
        """Every genotype that differs from ``genotype`` at most in ``block``."""
        kind, index = block
        for choice in self.block_choices(kind):
            candidate = copy.deepcopy(genotype)
            candidate[kind][index] = copy.deepcopy(choice)
            yield candidate

    def describe(self) -> str:
        per_block = {kind: len(self.block_choices(kind)) for kind in ("encoder", "decoder")}
        return (f"{self.depth} encoder + {self.depth} decoder blocks, each choosing its own two slot ops from "
                f"{sorted(SLOT_OPS)}, residual on/off, and down {sorted(DOWN_OPS)} or up {sorted(UP_OPS)}: "
                f"{per_block['encoder']} choices per encoder block, {per_block['decoder']} per decoder block, "
                f"{self.size():.3e} architectures")


def genotype_key(genotype: dict) -> str:
    """A canonical string for a genotype, or an entry holding one (dictionary key, de-duplication)."""
    return json.dumps(genotype, sort_keys=True, separators=(",", ":"))
