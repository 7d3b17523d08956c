"""FP-NAS (Yan et al., CVPR 2021): a distribution over architectures, learnt PARSEC-style, coarse to fine.

Each step draws M architectures from the distribution and runs the same batch through each with the
shared supernet weights. Importance weights w_i = softmax(-loss_i / T) over the samples (PARSEC, Casale et
al. 2019) weight both updates: the supernet follows sum_i w_i grad loss_i and the distribution ascends
sum_i w_i grad log p(a_i). With ``cost_weight`` > 0 a sample's loss gets the penalty
cost_weight * max(0, MACs / reference MACs - ``cost_target``).

Adaptive sampling: M follows the distribution's entropy, from ``max_samples`` (uniform distribution) down
to ``min_samples``; ``adaptive: false`` keeps M fixed (the ablation). The budget is counted in forward
passes (``supernet_steps`` of them, as one path per step costs the other strategies), so adaptive
sampling spends it on many samples early and more steps late.

Coarse to fine: first a factorised distribution (per block, independent categoricals over the resampling
op, each slot's op and the residual switch); after ``joint_after`` of the budget, one categorical per block
over all its choices, initialised to the product of the factors, so the marginals carry over unchanged.

The ranking scores the distribution's most likely architecture and ``final_samples`` draws from it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dosepred.engine.loop import lr_factor
from dosepred.nas.cost import architecture_cost
from dosepred.nas.evaluator import SearchData
from dosepred.nas.space import SearchSpace, genotype_key
from dosepred.nas.strategies.base import Budget, SearchResult, Strategy, register_strategy, silent
from dosepred.progress import Progress
from dosepred.nas.supernet import SupernetTrainer, fit_supernet, make_supernet, paths_of
from dosepred.networks.ops import SLOT_OPS, resampling
from dosepred.networks.searched import Genotype


def decisions(kind: str) -> dict[str, list[Any]]:
    """A block's separate decisions and their options (the factors of the coarse distribution)."""
    resample, table = resampling(kind)
    return {resample: list(table), "op0": list(SLOT_OPS), "op1": list(SLOT_OPS), "residual": [False, True]}


def factor_values(block: dict[str, Any]) -> dict[str, Any]:
    """A block choice as its decisions' values."""
    resample = "down" if "down" in block else "up"
    return {resample: block[resample], "op0": block["ops"][0], "op1": block["ops"][1], "residual": block["residual"]}


class ArchitectureDistribution(nn.Module):
    """Per block: factorised categoricals (coarse) or one categorical over the block's choices (joint)."""

    def __init__(self, space: SearchSpace) -> None:
        super().__init__()
        self.space = space
        self.factors = nn.ModuleList(
            nn.ParameterDict({name: nn.Parameter(torch.zeros(len(options))) for name, options in decisions(kind).items()})
            for kind, _ in space.blocks)
        self.joint: nn.ParameterList | None = None
        self._option_index: dict[str, torch.Tensor] = {}

    @property
    def is_joint(self) -> bool:
        return self.joint is not None

    def block_log_probs(self, b: int) -> torch.Tensor:
        """Log-probabilities of every choice of block ``b`` (in ``space.block_choices`` order)."""
        if self.joint is not None:
            return self.joint[b].log_softmax(dim=0)
        kind = self.space.blocks[b][0]
        option_index = self.option_index(kind)
        return sum(self.factors[b][name].log_softmax(dim=0)[option_index[:, d]] for d, name in enumerate(decisions(kind)))

    def option_index(self, kind: str) -> torch.Tensor:
        """(choices, decisions): which option of each decision every block choice takes."""
        if kind not in self._option_index:
            options = decisions(kind)
            self._option_index[kind] = torch.tensor(
                [[options[name].index(value) for name, value in factor_values(choice).items()]
                 for choice in self.space.block_choices(kind)])
        return self._option_index[kind]

    def to_joint(self) -> None:
        """Switch to one categorical per block, equal to the product of the factors."""
        with torch.no_grad():
            logits = [self.block_log_probs(b).clone() for b in range(len(self.space.blocks))]
        self.joint = nn.ParameterList(nn.Parameter(value) for value in logits)

    def sample(self, rng: np.random.Generator) -> tuple[Genotype, torch.Tensor]:
        """An architecture and its log-probability (differentiable in the distribution's parameters)."""
        genotype: Genotype = {"encoder": [], "decoder": []}
        log_prob = torch.zeros(())
        for b, (kind, _) in enumerate(self.space.blocks):
            logs = self.block_log_probs(b)
            probabilities = logs.detach().exp().double().numpy()
            index = int(rng.choice(len(probabilities), p=probabilities / probabilities.sum()))
            genotype[kind].append(self.space.block_choices(kind)[index])
            log_prob = log_prob + logs[index]
        return genotype, log_prob

    def log_prob(self, genotype: Genotype) -> torch.Tensor:
        return sum(self.block_log_probs(b)[self.space.block_choices(kind).index(genotype[kind][index])]
                   for b, (kind, index) in enumerate(self.space.blocks))

    def mode(self) -> Genotype:
        genotype: Genotype = {"encoder": [], "decoder": []}
        for b, (kind, _) in enumerate(self.space.blocks):
            genotype[kind].append(self.space.block_choices(kind)[int(self.block_log_probs(b).argmax())])
        return genotype

    def entropy(self) -> float:
        with torch.no_grad():
            return float(sum(-(logs.exp() * logs).sum() for logs in map(self.block_log_probs, range(len(self.space.blocks)))))

    def max_entropy(self) -> float:
        return sum(math.log(len(self.space.block_choices(kind))) for kind, _ in self.space.blocks)

    def marginals(self, b: int) -> dict[str, torch.Tensor]:
        """Block ``b``'s probability of each option of each decision."""
        kind = self.space.blocks[b][0]
        probabilities = self.block_log_probs(b).exp()
        options = decisions(kind)
        out = {name: torch.zeros(len(values)) for name, values in options.items()}
        for choice, p in zip(self.space.block_choices(kind), probabilities):
            for name, value in factor_values(choice).items():
                out[name][options[name].index(value)] += p
        return out


def sample_count(entropy: float, max_entropy: float, *, low: int, high: int) -> int:
    """How many architectures to draw: proportional to the normalised entropy, within [low, high]."""
    return int(min(high, max(low, round(high * entropy / max_entropy))))


def importance_weights(losses: list[float], temperature: float) -> torch.Tensor:
    """PARSEC's self-normalised importance weights: the likelihood exp(-loss / T), normalised over the samples."""
    return torch.softmax(-torch.tensor(losses) / temperature, dim=0)


def distribution_step(optimizer: torch.optim.Optimizer, log_probs: list[torch.Tensor], importance: torch.Tensor) -> None:
    """Ascend sum_i w_i log p(a_i): probability moves towards the samples with the larger weights."""
    optimizer.zero_grad(set_to_none=True)
    (-(importance * torch.stack(log_probs)).sum()).backward()
    optimizer.step()


@register_strategy
class FPNAS(Strategy):
    name = "fpnas"
    options = {"max_samples": 8, "min_samples": 2, "adaptive": True, "fixed_samples": 4, "joint_after": 0.5,
               "distribution_lr": 0.05, "temperature": 0.02, "cost_weight": 0.0, "cost_target": 1.0,
               "final_samples": 200}

    def search(self, space: SearchSpace, data: SearchData, budget: Budget, progress: Progress | None = None) -> SearchResult:
        report = progress or silent
        trainer, _ = fit_supernet(
            lambda config, run, resume: FPNASTrainer(config, run, space=space, data=data, settings=self.settings,
                                                     resume=resume),
            run_dir=budget.run_dir / "supernet" if budget.run_dir else None, resume=budget.resume, seed=data.seed,
            device=budget.device, steps=budget.supernet_steps, lr=budget.lr, batch_size=budget.batch_size,
            on_step=lambda trainer: report("fp-nas", trainer.passes, budget.supernet_steps))
        supernet, distribution = trainer.network, trainer.distribution
        trace = trainer.trace
        log = [{"phase": "distribution", "steps": trainer.step, "forward_passes": trainer.passes,
                "adaptive": self.settings["adaptive"], "samples_per_step": [entry["samples"] for entry in trace],
                "entropy": [round(entry["entropy"], 4) for entry in trace]}]
        counts = {"training_forward_passes": trainer.passes, "sampled_architectures": len(trainer.distinct)}

        path = paths_of(supernet)
        book = self.score_book(data, budget, path, supernet)
        rng = np.random.default_rng([data.seed, 2])
        with torch.no_grad():
            candidates = [distribution.mode()] + [distribution.sample(rng)[0] for _ in range(self.settings["final_samples"])]
        for done, genotype in enumerate(candidates):
            book({"genotype": genotype})
            report("scoring samples", done + 1, len(candidates))
        log.append({"phase": "final", "mode": book({"genotype": candidates[0]}), "entropy": distribution.entropy()})
        counts["evaluated_architectures"] = len(book.entries)
        return SearchResult(book.ranked(), path, log, counts, supernet)


class FPNASTrainer(SupernetTrainer):
    """FP-NAS through the training loop. A loop step is one distribution step: ``m`` paths drawn from the
    distribution (m from its entropy when adaptive), the supernet's loss weighted by PARSEC's importance weights,
    then the distribution moves towards the better paths. ``optim.steps`` is the budget of forward passes; the
    loop ends when the passes reach it, and the weights' cosine runs over the passes."""

    def __init__(self, config: dict[str, Any], run_dir: str | Path, *, space: SearchSpace, data: SearchData,
                 settings: dict[str, Any], resume: bool = False) -> None:
        self.settings, self.passes = settings, 0
        self.distinct: list[str] = []  # keys of the architectures trained on, in the order first drawn
        self.trace: list[dict[str, Any]] = []
        super().__init__(config, run_dir, space=space, data=data, resume=resume)

    def build_network(self) -> nn.Module:
        supernet = make_supernet(self.space).to(self.device)
        self.distribution = ArchitectureDistribution(self.space)
        self.distribution_optimizer = torch.optim.Adam(self.distribution.parameters(), lr=self.settings["distribution_lr"])
        self.resolution = self.data.validation["image"].shape[-1]
        self.reference_macs = self.cost(self.space.reference())
        return supernet

    def cost(self, genotype: Genotype) -> int:
        """The MACs of ``genotype``'s stand-alone network for one validation input."""
        space = self.space
        return architecture_cost(genotype, space.channels, self.resolution, in_channels=space.in_channels,
                                 stem_stride=space.stem_stride)["macs"]

    def build_scheduler(self) -> torch.optim.lr_scheduler.LRScheduler:
        optim = self.config["optim"]
        return torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda _: lr_factor(
            self.passes, warmup_steps=0, steps=optim["steps"], min_lr_ratio=optim["min_lr_ratio"]))

    def finished(self) -> bool:
        return self.passes >= self.config["optim"]["steps"]

    def train_step(self, batch: tuple[dict[str, torch.Tensor], Genotype]) -> float:
        samples, _ = batch  # the paths come from the distribution
        s, distribution, budget = self.settings, self.distribution, self.config["optim"]["steps"]
        if not distribution.is_joint and self.passes >= s["joint_after"] * budget:
            distribution.to_joint()
            self.distribution_optimizer = torch.optim.Adam(distribution.joint.parameters(), lr=s["distribution_lr"])
        entropy = distribution.entropy()
        m = (sample_count(entropy, distribution.max_entropy(), low=s["min_samples"], high=s["max_samples"])
             if s["adaptive"] else s["fixed_samples"])
        m = min(m, budget - self.passes)
        rng = np.random.default_rng([self.config["seed"], 3, self.step])
        self.network.train()
        losses, penalised, log_probs = [], [], []
        for _ in range(m):
            genotype, log_prob = distribution.sample(rng)
            if (key := genotype_key(genotype)) not in self.distinct:
                self.distinct.append(key)
            losses.append(self.path_loss(lambda image, genotype=genotype: self.network(image, genotype), samples))
            penalty = 0.0
            if s["cost_weight"]:
                relative = self.cost(genotype) / self.reference_macs
                penalty = s["cost_weight"] * max(0.0, relative - s["cost_target"])
            penalised.append(float(losses[-1].detach()) + penalty)
            log_probs.append(log_prob)
        importance = importance_weights(penalised, s["temperature"]).to(self.device)
        loss = (importance * torch.stack(losses)).sum()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.passes += m  # before the schedule moves: the next step's rate follows the passes so far
        self.apply_gradients()
        distribution_step(self.distribution_optimizer, log_probs, importance.cpu())
        self.trace.append({"step": self.step + 1, "samples": m, "entropy": entropy})
        return float(loss.detach())

    def checkpoint_state(self) -> dict[str, Any]:
        return super().checkpoint_state() | {
            "distribution": self.distribution.state_dict(), "joint": self.distribution.is_joint,
            "distribution_optimizer": self.distribution_optimizer.state_dict(), "passes": self.passes,
            "distinct": self.distinct, "trace": self.trace}

    def restore_state(self, state: dict[str, Any]) -> None:
        super().restore_state(state)
        if state["joint"]:
            self.distribution.to_joint()
            self.distribution_optimizer = torch.optim.Adam(self.distribution.joint.parameters(),
                                                           lr=self.settings["distribution_lr"])
        self.distribution.load_state_dict(state["distribution"])
        self.distribution_optimizer.load_state_dict(state["distribution_optimizer"])
        self.passes, self.distinct, self.trace = state["passes"], state["distinct"], state["trace"]
