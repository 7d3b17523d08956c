"""GOLD-NAS (Bi et al., 2020) on the dose search space: one-level search with gradual pruning.

The enlarged space: every block keeps any non-empty subset of its resampling ops and of each slot's ops
(their outputs summed), and its residual switch; each op and each residual is scaled by a sigmoid gate.
Weights and gates are optimised together on the same batches (one level). The resource term is the
gate-weighted MACs of the ops still alive, relative to all ops' MACs; its coefficient mu grows by a factor
(1 + ``mu_step``) after a pruning round that removed fewer than ``min_pruned`` ops and shrinks by it after
one that reached the limit of ``max_pruned``. Every ``prune_every`` steps after the warm-up, ops whose gate
is below ``threshold`` are pruned (at most ``max_pruned`` a round, weakest first; each slot and each
resampling keeps at least one op). The architecture after every round that pruned something is a stable
point; at the end every stable point is scored on the validation batch with the final weights and gates
(as ``path`` runs it) and costed in MACs: one search gives a (cost, quality) Pareto front.

``pruning: hard`` is the ablation: the same objective without gradual pruning, then one hard pruning at
the end to each slot's strongest op (and resampling), keeping residuals whose gate is above 0.5.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dosepred.engine.loop import clip_and_step
from dosepred.nas.cost import architecture_cost, macs_by_module
from dosepred.nas.evaluator import SearchData
from dosepred.nas.space import SearchSpace, genotype_key
from dosepred.nas.strategies.base import Budget, SearchResult, Strategy, register_strategy, silent
from dosepred.progress import Progress
from dosepred.nas.supernet import SupernetTrainer, fit_supernet, make_supernet
from dosepred.networks.ops import SLOT_OPS, resampling
from dosepred.networks.searched import Gate, Genotype, UNetSpaceNet

Part = str | int  # "resample", a slot index, or "residual"


def parts(kind: str) -> dict[Part, list[str]]:
    """The gated parts of a block and their candidate ops."""
    return {"resample": list(resampling(kind)[1]), 0: list(SLOT_OPS), 1: list(SLOT_OPS),
            "residual": ["residual"]}


class GatedSupernet(nn.Module):
    """The supernet, a gate per op, and which ops are still alive (the current enlarged architecture)."""

    def __init__(self, space: SearchSpace) -> None:
        super().__init__()
        self.space = space
        self.supernet: UNetSpaceNet = make_supernet(space)
        self.logits = nn.ParameterDict({self.key(kind, index, part): nn.Parameter(torch.zeros(len(names)))
                                        for kind, index in space.blocks for part, names in parts(kind).items()})
        self.alive = {self.key(kind, index, part): list(names) for kind, index in space.blocks
                      for part, names in parts(kind).items()}

    @staticmethod
    def key(kind: str, index: int, part: Part) -> str:
        return f"{kind}{index}_{part}"

    def gate(self, kind: str, index: int, part: Part, name: str) -> torch.Tensor:
        names = parts(kind)[part]
        return torch.sigmoid(self.logits[self.key(kind, index, part)][names.index(name)])

    def gates(self, kind: str, index: int) -> Gate:
        return lambda part, name: self.gate(kind, index, part, name or "residual")

    def architecture(self) -> Genotype:
        """The alive ops as a genotype (lists where a part keeps several ops)."""
        genotype: Genotype = {"encoder": [], "decoder": []}
        for kind, index in self.space.blocks:
            alive = {part: self.alive[self.key(kind, index, part)] for part in parts(kind)}
            single = {part: names[0] if len(names) == 1 else names for part, names in alive.items()}
            genotype[kind].append({resampling(kind)[0]: single["resample"],
                                   "ops": [single[0], single[1]], "residual": bool(alive["residual"])})
        return genotype

    def forward(self, x: torch.Tensor, genotype: Genotype | None = None) -> torch.Tensor:
        return self.supernet(x, genotype or self.architecture(), gates=self.gates)

    def op_macs(self, resolution: int) -> dict[str, np.ndarray]:
        """MACs of every candidate op (one input of ``resolution``^3), per gated part."""
        everything = self.architecture()
        x = torch.zeros(1, self.supernet.stem[0].in_channels, *(resolution,) * 3,
                        device=next(self.parameters()).device)
        by_module = macs_by_module(self.supernet, lambda: self.supernet(x, everything))
        macs = {}
        for kind, index in self.space.blocks:
            for part, names in parts(kind).items():
                where = f"{kind}.{index}." + ("resample" if part == "resample" else f"slots.{part}")
                macs[self.key(kind, index, part)] = np.array([by_module.get(f"{where}.{name}", 0) for name in names],
                                                             dtype=float)
        return macs

    def alive_masks(self) -> dict[str, torch.Tensor]:
        """Per gated part: 1 for each alive op, 0 for each pruned one."""
        return {key: torch.tensor([name in self.alive[key] for name in parts_of(key)], dtype=torch.float32,
                                  device=self.logits[key].device) for key in self.alive}

    def prune(self, threshold: float, limit: int) -> list[str]:
        """Remove up to ``limit`` alive ops whose gate is below ``threshold``, weakest first."""
        weak = []
        for key, names in self.alive.items():
            candidates = parts_of(key)
            gates = torch.sigmoid(self.logits[key].detach())
            for name in names:
                value = float(gates[candidates.index(name)])
                if value < threshold:
                    weak.append((value, key, name))
        pruned = []
        for _, key, name in sorted(weak):
            if len(pruned) == limit:
                break
            if key.endswith("_residual") or len(self.alive[key]) > 1:
                self.alive[key].remove(name)
                pruned.append(f"{key}:{name}")
        return pruned

    def prune_hard(self) -> None:
        """Keep each slot's and resampling's strongest op, and residuals whose gate is above 0.5."""
        for key, names in self.alive.items():
            gates = torch.sigmoid(self.logits[key].detach())
            if key.endswith("_residual"):
                self.alive[key] = names if float(gates[0]) > 0.5 else []
            else:
                candidates = parts_of(key)
                self.alive[key] = [max(names, key=lambda name: float(gates[candidates.index(name)]))]


def parts_of(key: str) -> list[str]:
    """The candidate ops of a gated part, from its key."""
    block, part = key.split("_", 1)
    kind = "encoder" if block.startswith("encoder") else "decoder"
    return parts(kind)[int(part) if part.isdigit() else part]


class GatedPath(nn.Module):
    """One (possibly enlarged) architecture run with the gated supernet's weights and gates."""

    def __init__(self, gold: GatedSupernet, genotype: Genotype) -> None:
        super().__init__()
        self.gold, self.genotype = gold, genotype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gold(x, self.genotype)


def pareto_front(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The points no other point beats on both MACs and estimated score, cheapest first."""
    front, best = [], float("inf")
    for point in sorted(points, key=lambda p: (p["macs"], p["estimated_dose_score"])):
        if point["estimated_dose_score"] < best:
            front.append(point)
            best = point["estimated_dose_score"]
    return front


@register_strategy
class GOLDNAS(Strategy):
    name = "gold"
    options = {"pruning": "gradual", "warmup_fraction": 0.3, "prune_every": 20, "threshold": 0.05, "min_pruned": 1,
               "max_pruned": 4, "mu_start": 0.05, "mu_step": 0.5, "gate_lr": 0.05}

    def search(self, space: SearchSpace, data: SearchData, budget: Budget, progress: Progress | None = None) -> SearchResult:
        report = progress or silent
        s = self.settings
        if s["pruning"] not in ("gradual", "hard"):
            raise ValueError(f"gold pruning must be 'gradual' or 'hard', got {s['pruning']!r}")
        resolution = data.validation["image"].shape[-1]
        trainer, _ = fit_supernet(
            lambda config, run, resume: GoldTrainer(config, run, space=space, data=data, settings=s, resume=resume),
            run_dir=budget.run_dir / "supernet" if budget.run_dir else None, resume=budget.resume, seed=data.seed,
            device=budget.device, steps=budget.supernet_steps, lr=budget.lr, batch_size=budget.batch_size,
            on_step=lambda trainer: report("gold-nas", trainer.step, budget.supernet_steps))
        gold: GatedSupernet = trainer.network
        stable, rounds, mu = trainer.stable, trainer.rounds, trainer.mu
        if s["pruning"] == "hard":
            gold.prune_hard()
        if s["pruning"] == "hard" or not stable:  # the hard-pruned result, or the unpruned one if nothing was pruned
            stable.append(copy.deepcopy(gold.architecture()))

        # Every stable point is scored with the final weights and gates, as path() runs it.
        def path(entry: dict[str, Any]) -> GatedPath:
            return GatedPath(gold, entry["genotype"])

        book = self.score_book(data, budget, path, gold)
        points = [{"genotype": genotype, "estimated_dose_score": book({"genotype": genotype}),
                   **architecture_cost(genotype, space.channels, resolution, in_channels=space.in_channels,
                                      stem_stride=space.stem_stride)} for genotype in stable]
        front = pareto_front(points)
        log = [{"phase": "gates", "pruning": s["pruning"], "rounds": rounds, "final_mu": mu},
               {"phase": "stable points", "points": [{key: p[key] for key in ("macs", "parameters", "estimated_dose_score")}
                                                     for p in points]},
               {"phase": "pareto", "front": [{key: p[key] for key in ("macs", "parameters", "estimated_dose_score")}
                                             for p in front]}]
        counts = {"training_forward_passes": budget.supernet_steps, "sampled_architectures": len(stable),
                  "evaluated_architectures": len(book.entries)}
        unique = {genotype_key(point["genotype"]): point for point in points}.values()
        ranked = sorted(unique, key=lambda point: point["estimated_dose_score"])
        return SearchResult(ranked, path, log, counts, gold)


class GoldTrainer(SupernetTrainer):
    """GOLD-NAS's one-level training through the training loop: weights (AdamW, the recipe's cosine) and gates
    (AdamW at a constant rate) on the same batches, the MACs term's coefficient mu adapted and ops pruned every
    ``prune_every`` steps after the warm-up; every pruning leaves a stable point."""

    def __init__(self, config: dict[str, Any], run_dir: str | Path, *, space: SearchSpace, data: SearchData,
                 settings: dict[str, Any], resume: bool = False) -> None:
        self.settings = settings
        self.warmup = int(settings["warmup_fraction"] * config["optim"]["steps"])
        self.mu, self.rounds, self.stable = 0.0, [], []
        super().__init__(config, run_dir, space=space, data=data, resume=resume)

    def build_network(self) -> nn.Module:
        gold = GatedSupernet(self.space).to(self.device)
        resolution = self.data.validation["image"].shape[-1]
        self.macs = {key: torch.as_tensor(value, dtype=torch.float32, device=self.device)
                     for key, value in gold.op_macs(resolution).items()}
        self.total_macs = float(sum(value.sum() for value in self.macs.values()))
        self.alive = gold.alive_masks()
        self.gates = torch.optim.AdamW(gold.logits.parameters(), lr=self.settings["gate_lr"], weight_decay=0.0)
        return gold

    def build_optimizer(self) -> torch.optim.Optimizer:
        optim = self.config["optim"]
        return torch.optim.AdamW(self.network.supernet.parameters(), lr=optim["lr"], weight_decay=optim["weight_decay"])

    def train_step(self, batch: tuple[dict[str, torch.Tensor], Genotype]) -> float:
        samples, _ = batch  # every alive op runs, gated
        gold: GatedSupernet = self.network
        s, step = self.settings, self.step
        gold.train()
        if step == self.warmup:
            self.mu = s["mu_start"]
        task = self.path_loss(gold, samples)
        cost = sum((torch.sigmoid(gold.logits[key]) * self.macs[key] * self.alive[key]).sum()
                   for key in self.macs) / self.total_macs
        gold.zero_grad(set_to_none=True)
        (task + self.mu * cost).backward()
        self.apply_gradients()
        clip_and_step(self.gates, gold.logits.parameters(), grad_clip=None, skip_grad_norm=None)  # not on garbage
        if s["pruning"] == "gradual" and step >= self.warmup and (step + 1 - self.warmup) % s["prune_every"] == 0:
            pruned = gold.prune(s["threshold"], s["max_pruned"])
            if len(pruned) < s["min_pruned"]:
                self.mu *= 1 + s["mu_step"]
            elif len(pruned) == s["max_pruned"]:
                self.mu /= 1 + s["mu_step"]
            self.rounds.append({"step": step + 1, "pruned": pruned, "mu": self.mu, "cost": float(cost.detach())})
            if pruned:
                self.alive = gold.alive_masks()
                self.stable.append(copy.deepcopy(gold.architecture()))
        return float(task.detach())

    def checkpoint_state(self) -> dict[str, Any]:
        return super().checkpoint_state() | {"gates": self.gates.state_dict(), "mu": self.mu, "rounds": self.rounds,
                                             "stable": self.stable, "alive": self.network.alive}

    def restore_state(self, state: dict[str, Any]) -> None:
        super().restore_state(state)
        self.gates.load_state_dict(state["gates"])
        self.mu, self.rounds, self.stable = state["mu"], state["rounds"], state["stable"]
        self.network.alive = state["alive"]
        self.alive = self.network.alive_masks()
