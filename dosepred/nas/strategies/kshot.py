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
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from dosepred.engine.loop import clip_and_step, warmup_cosine
from dosepred.nas.blockwise import blockwise_search
from dosepred.nas.evaluator import SearchData
from dosepred.nas.space import SearchSpace
from dosepred.nas.strategies.base import Budget, SearchResult, Strategy, register_strategy, silent
from dosepred.progress import Progress
from dosepred.nas.supernet import SupernetTrainer, fit_supernet, make_supernet, training_batch
from dosepred.networks.ops import SLOT_OPS, SqueezeExcitation, resampling
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
        # a squeeze-and-excitation's hidden layer has C // reduction units: a narrower network's, of its own C
        self.excitations = {module.gate[1]: module for module in self.replicas[0].modules()
                            if isinstance(module, SqueezeExcitation)}
        for module in self.replicas[0].modules():
            if not list(module.children()):  # every layer: conv, norm, activation, pooling, ...
                module.register_forward_hook(self._keep_width)

    def _keep_width(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        excitation = self.excitations.get(module)
        if excitation is not None:
            keep = max(1, math.ceil(self.ratio * module.in_channels) // excitation.reduction)
        else:
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
        warmup = int(self.settings["warmup_fraction"] * budget.supernet_steps)
        trainer, _ = fit_supernet(
            lambda config, run, resume: KShotTrainer(config, run, space=space, data=data, k=int(self.settings["k"]),
                                                     widths=widths, warmup=warmup,
                                                     simplex_lr=self.settings["simplex_lr"], resume=resume),
            run_dir=budget.run_dir / "supernet" if budget.run_dir else None, resume=budget.resume, seed=data.seed,
            device=budget.device, steps=budget.supernet_steps, lr=budget.lr, batch_size=budget.batch_size,
            on_step=lambda trainer: report("k-shot supernets", trainer.step, budget.supernet_steps))
        kshot: KShotSupernet = trainer.network
        log = [{"phase": "supernets", "k": kshot.k, "widths": kshot.widths, "warmup_steps": warmup,
                "weight_steps": trainer.weight_steps, "simplex_steps": budget.supernet_steps - trainer.weight_steps,
                **{f"final_{name}_loss": sum(v[-20:]) / len(v[-20:]) for name, v in trainer.losses.items() if v}}]
        counts = {"training_forward_passes": budget.supernet_steps,
                  "sampled_architectures": trainer.sampled_architectures()}

        full = len(widths) - 1
        by_channels = {tuple(width_channels(space, ratio)): index for index, ratio in enumerate(widths)}

        def path(entry: dict[str, Any]) -> KShotPath:
            channels = tuple(entry.get("channels", space.channels))
            if channels not in by_channels:
                raise ValueError(f"channels {list(channels)} are not one of the searched widths")
            return KShotPath(kshot, entry["genotype"], by_channels[channels])

        book = self.score_book(data, budget, path, kshot)
        _, sweeps = blockwise_search(space, lambda genotype: book({"genotype": genotype}),
                                     max_sweeps=budget.max_sweeps, report=report)
        for entry in book.ranked()[: self.settings["rescored"]]:
            for index in range(full):
                book({"genotype": entry["genotype"], "channels": width_channels(space, widths[index])})
        ranked = [{**entry, "channels": entry.get("channels", list(space.channels))} for entry in book.ranked()]
        counts["evaluated_architectures"] = len(book.entries)
        return SearchResult(ranked, path, [*log, *sweeps], counts, kshot)


class KShotTrainer(SupernetTrainer):
    """K-shot supernets through the training loop: a warm-up with lambda drawn uniformly from the simplex, then
    supernet steps (AdamW, the recipe's cosine over the supernet steps) alternating with simplex-net steps."""

    def __init__(self, config: dict[str, Any], run_dir: str | Path, *, space: SearchSpace, data: SearchData, k: int,
                 widths: list[float], warmup: int, simplex_lr: float, resume: bool = False) -> None:
        self.k, self.widths, self.warmup, self.simplex_lr = k, widths, warmup, simplex_lr
        self.losses: dict[str, list[float]] = {"supernets": [], "simplex": []}  # of the steps trained now
        super().__init__(config, run_dir, space=space, data=data, resume=resume)

    def trains_simplex(self, step: int) -> bool:
        return self.k > 1 and step >= self.warmup and (step - self.warmup) % 2 == 1

    @property
    def weight_steps(self) -> int:
        return sum(not self.trains_simplex(step) for step in range(self.config["optim"]["steps"]))

    def build_network(self) -> nn.Module:
        kshot = KShotSupernet(self.space, k=self.k, widths=self.widths).to(self.device)
        self.simplex_optimizer = torch.optim.Adam(kshot.simplex.parameters(), lr=self.simplex_lr)
        self.simplex_uniform = torch.distributions.Dirichlet(torch.ones(len(kshot.modules_in_order), self.k))
        return kshot

    def build_optimizer(self) -> torch.optim.Optimizer:
        optim = self.config["optim"]
        return torch.optim.AdamW(self.network.replicas.parameters(), lr=optim["lr"], weight_decay=optim["weight_decay"])

    def build_scheduler(self) -> torch.optim.lr_scheduler.LRScheduler:
        return warmup_cosine(self.optimizer, warmup_steps=0, steps=self.weight_steps,
                             min_lr_ratio=self.config["optim"]["min_lr_ratio"])

    def draw(self, step: int) -> tuple[np.ndarray, Genotype, int]:
        indices, genotype = super().draw(step)
        return indices, genotype, int(np.random.default_rng([self.config["seed"], 2, step]).integers(len(self.widths)))

    def make_batch(self, step: int) -> tuple[dict[str, torch.Tensor], Genotype, int]:
        indices, genotype, width = self.draw(step)
        return training_batch(self.data, indices, step, self.device), genotype, width

    def train_step(self, batch: tuple[dict[str, torch.Tensor], Genotype, int]) -> float:
        samples, genotype, width = batch
        kshot: KShotSupernet = self.network
        kshot.train()
        simplex_step = self.trains_simplex(self.step)
        if self.step < self.warmup or kshot.k == 1:
            lambdas = self.simplex_uniform.sample().to(self.device)
        else:
            lambdas = kshot.lambdas(genotype, width)
            lambdas = lambdas if simplex_step else lambdas.detach()
        loss = self.path_loss(lambda image: kshot(image, genotype, width, lambdas), samples)
        kshot.zero_grad(set_to_none=True)
        loss.backward()
        if simplex_step:  # as the weights: no step on a gradient that is not finite
            clip_and_step(self.simplex_optimizer, kshot.simplex.parameters(), grad_clip=None, skip_grad_norm=None)
            kshot.zero_grad(set_to_none=True)
        else:
            self.apply_gradients()
        self.losses["simplex" if simplex_step else "supernets"].append(float(loss.detach()))
        return float(loss.detach())

    def checkpoint_state(self) -> dict[str, Any]:
        return super().checkpoint_state() | {"simplex_optimizer": self.simplex_optimizer.state_dict()}

    def restore_state(self, state: dict[str, Any]) -> None:
        super().restore_state(state)
        self.simplex_optimizer.load_state_dict(state["simplex_optimizer"])
