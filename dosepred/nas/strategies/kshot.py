"""K-shot NAS (Su et al., ICML 2021) on the dose search space.

K supernets (K copies of every operation's weights) form a dictionary. A small simplex-net maps an
architecture's encoding (its block choices and its width) to a convex code per module (stem, each block,
head): lambda in the simplex, by softmax. The path runs with the weights sum_k lambda_k W_k. During the
warm-up lambda is drawn uniformly from the simplex (Dirichlet(1, ..., 1)), so every copy learns; then the
supernets (lambda from the simplex-net, fixed) and the simplex-net (weights fixed) are trained in
alternate steps, on different batches and architectures, so the number of forward passes equals the other
strategies' ``supernet_steps``. K = 1 is plain weight sharing (the ablation).

Widths: a ratio r keeps the first ceil(r * C) channels of every layer's output and zeroes the rest (the
slimmable way), so the masked path computes exactly a network with ceil(r * C) channels per layer. The
search is LE-NAS's block-wise search at full width on the lambda-merged weights; the ``rescored`` best
architectures are then scored at every width, so the ranking lists each (architecture, width) it scored.
Widths are ranked by score alone (no resource constraint), so narrower ones rarely come first; their
estimates show what width costs.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from dosepred.engine.loop import clip_and_step, warmup_cosine
from dosepred.engine.losses import masked_l1
from dosepred.nas.blockwise import blockwise_search
from dosepred.nas.evaluator import Evaluator, ScoreBook, SearchData
from dosepred.nas.space import SearchSpace, genotype_key
from dosepred.nas.strategies.base import Budget, Progress, SearchResult, Strategy, register_strategy, silent
from dosepred.nas.supernet import make_supernet, training_batch
from dosepred.networks.ops import SLOT_OPS, resampling
from dosepred.networks.searched import Genotype


def width_channels(space: SearchSpace, ratio: float) -> list[int]:
    return [max(1, math.ceil(ratio * c)) for c in space.channels]


def encode(space: SearchSpace, genotype: Genotype, width: int, widths: int) -> torch.Tensor:
    """One-hot of every block's choices (resample, two ops, residual) and of the width index."""
    parts = []
    for kind, index in space.blocks:
        block = genotype[kind][index]
        resample, table = resampling(kind)
        for value, options in ((block[resample], list(table)), (block["ops"][0], list(SLOT_OPS)),
                               (block["ops"][1], list(SLOT_OPS)), (block["residual"], [False, True])):
            parts.append(nn.functional.one_hot(torch.tensor(options.index(value)), len(options)))
    parts.append(nn.functional.one_hot(torch.tensor(width), widths))
    return torch.cat(parts).float()


def module_of(parameter: str) -> str:
    """The module a parameter belongs to for lambda: stem, encoder.<i>, decoder.<i> or head."""
    parts = parameter.split(".")
    return parts[0] if parts[0] in ("stem", "head") else ".".join(parts[:2])


class KShotSupernet(nn.Module):
    """K supernets and the simplex-net; ``forward(x, genotype, width, lambdas)`` runs one merged path."""

    def __init__(self, space: SearchSpace, *, k: int, widths: list[float], hidden: int = 64) -> None:
        super().__init__()
        self.space, self.k, self.widths = space, k, widths
        self.replicas = nn.ModuleList(make_supernet(space) for _ in range(k))
        self.modules_in_order = ["stem", *(f"encoder.{i}" for i in range(space.depth)),
                                 *(f"decoder.{i}" for i in range(space.depth)), "head"]
        self.group = {name: self.modules_in_order.index(module_of(name)) for name, _ in self.replicas[0].named_parameters()}
        inputs = len(encode(space, space.reference(), 0, len(widths)))
        self.simplex = nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, len(self.modules_in_order) * k))
        nn.init.zeros_(self.simplex[-1].weight)  # uniform lambda until the simplex-net has learnt something
        nn.init.zeros_(self.simplex[-1].bias)
        self.ratio = 1.0
        for module in self.replicas[0].modules():
            if not list(module.children()):  # every layer: conv, norm, activation, pooling, ...
                module.register_forward_hook(self._keep_width)

    def _keep_width(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        keep = max(1, math.ceil(self.ratio * output.shape[1]))
        if output.ndim != 5 or keep == output.shape[1]:
            return output
        mask = torch.zeros(output.shape[1], device=output.device, dtype=output.dtype)
        mask[:keep] = 1
        return output * mask.view(1, -1, 1, 1, 1)

    def lambdas(self, genotype: Genotype, width: int) -> torch.Tensor:
        """(modules, K): one convex code per module (rows on the simplex)."""
        code = encode(self.space, genotype, width, len(self.widths)).to(self.simplex[0].weight.device)
        return self.simplex(code).view(len(self.modules_in_order), self.k).softmax(dim=1)

    def forward(self, x: torch.Tensor, genotype: Genotype, width: int, lambdas: torch.Tensor) -> torch.Tensor:
        names = [name for name, _ in self.replicas[0].named_parameters()]
        stacks = [list(replica.parameters()) for replica in self.replicas]
        merged = {name: sum(lambdas[self.group[name], k] * stacks[k][i] for k in range(self.k))
                  for i, name in enumerate(names)}
        self.ratio = self.widths[width]
        try:
            return functional_call(self.replicas[0], merged, (x, genotype))
        finally:
            self.ratio = 1.0


class KShotPath(nn.Module):
    """One architecture at one width, run with its lambda-merged weights."""

    def __init__(self, kshot: KShotSupernet, genotype: Genotype, width: int) -> None:
        super().__init__()
        self.kshot, self.genotype, self.width = kshot, genotype, width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.kshot(x, self.genotype, self.width, self.kshot.lambdas(self.genotype, self.width))


@register_strategy
class KShotNAS(Strategy):
    name = "kshot"
    options = {"k": 4, "widths": [0.5, 0.75, 1.0], "warmup_fraction": 0.3, "simplex_lr": 1e-3, "rescored": 10}

    def search(self, space: SearchSpace, data: SearchData, budget: Budget, progress: Progress | None = None) -> SearchResult:
        report = progress or silent
        widths = sorted(float(w) for w in self.settings["widths"])
        if not widths or widths[-1] != 1.0 or widths[0] <= 0:
            raise ValueError(f"kshot widths must be ratios in (0, 1] that include 1.0, got {self.settings['widths']}")
        kshot = KShotSupernet(space, k=int(self.settings["k"]), widths=widths).to(budget.device)
        log, counts = self.train(kshot, space, data, budget, report)

        full = len(widths) - 1
        by_channels = {tuple(width_channels(space, ratio)): index for index, ratio in enumerate(widths)}

        def path(entry: dict[str, Any]) -> KShotPath:
            channels = tuple(entry.get("channels", space.channels))
            if channels not in by_channels:
                raise ValueError(f"channels {list(channels)} are not one of the searched widths")
            return KShotPath(kshot, entry["genotype"], by_channels[channels])

        book = ScoreBook(Evaluator(data, device=budget.device), path)
        _, sweeps = blockwise_search(space, lambda genotype: book({"genotype": genotype}),
                                     max_sweeps=budget.max_sweeps, report=report)
        for entry in book.ranked()[: self.settings["rescored"]]:
            for index in range(full):
                book({"genotype": entry["genotype"], "channels": width_channels(space, widths[index])})
        ranked = [{**entry, "channels": entry.get("channels", list(space.channels))} for entry in book.ranked()]
        counts["evaluated_architectures"] = len(book.entries)
        return SearchResult(ranked, path, [*log, *sweeps], counts, kshot)

    def train(self, kshot: KShotSupernet, space: SearchSpace, data: SearchData, budget: Budget,
              report: Progress) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """Warm-up with lambda drawn uniformly from the simplex, then alternate supernet and simplex-net steps."""
        warmup = int(self.settings["warmup_fraction"] * budget.supernet_steps)

        def trains_simplex(step: int) -> bool:
            return kshot.k > 1 and step >= warmup and (step - warmup) % 2 == 1

        weight_steps = sum(not trains_simplex(step) for step in range(budget.supernet_steps))
        weights = torch.optim.AdamW(kshot.replicas.parameters(), lr=budget.lr, weight_decay=1e-4)
        schedule = warmup_cosine(weights, warmup_steps=0, steps=weight_steps, min_lr_ratio=0.05)
        simplex = torch.optim.Adam(kshot.simplex.parameters(), lr=self.settings["simplex_lr"])
        simplex_uniform = torch.distributions.Dirichlet(torch.ones(len(kshot.modules_in_order), kshot.k))
        rng = np.random.default_rng([data.seed, 1])
        kshot.train()
        losses: dict[str, list[float]] = {"supernets": [], "simplex": []}
        drawn: set[str] = set()
        for step in range(budget.supernet_steps):
            batch = training_batch(data, rng, step, budget.batch_size, budget.device)
            genotype, width = space.sample(rng), int(rng.integers(len(kshot.widths)))
            drawn.add(genotype_key({"genotype": genotype, "width": width}))
            simplex_step = trains_simplex(step)
            if step < warmup or kshot.k == 1:
                lambdas = simplex_uniform.sample().to(budget.device)
            else:
                lambdas = kshot.lambdas(genotype, width)
                lambdas = lambdas if simplex_step else lambdas.detach()
            loss = masked_l1(kshot(batch["image"], genotype, width, lambdas), batch["dose"], batch["possible_dose_mask"])
            kshot.zero_grad(set_to_none=True)
            loss.backward()
            if simplex_step:
                simplex.step()
            else:
                clip_and_step(weights, kshot.replicas.parameters(), grad_clip=1.0, skip_grad_norm=None)
                schedule.step()
            losses["simplex" if simplex_step else "supernets"].append(float(loss.detach()))
            report("k-shot supernets", step + 1, budget.supernet_steps)
        kshot.zero_grad(set_to_none=True)
        log = [{"phase": "supernets", "k": kshot.k, "widths": kshot.widths, "warmup_steps": warmup,
                "weight_steps": weight_steps, "simplex_steps": budget.supernet_steps - weight_steps,
                **{f"final_{name}_loss": sum(v[-20:]) / len(v[-20:]) for name, v in losses.items() if v}}]
        return log, {"training_forward_passes": budget.supernet_steps, "sampled_architectures": len(drawn)}
