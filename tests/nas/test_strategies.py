"""The search strategies' mechanisms on tiny inputs (K-shot, GOLD-NAS, FP-NAS, random) and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dosepred.cli import app
from dosepred.data.dataset import ExpandedSamples, PatientSamples
from dosepred.engine.config import DEFAULTS
from dosepred.nas import evaluator
from dosepred.nas.cost import architecture_cost
from dosepred.nas.evaluator import (Evaluator, ScoreBook, ScoreStore, SearchData, expanded_bytes, fingerprint,
                                    relative_distance)
from dosepred.nas.space import SearchSpace
from dosepred.nas.strategies import Budget, get_strategy, strategy_names
from dosepred.nas.strategies.fpnas import ArchitectureDistribution, distribution_step, importance_weights, sample_count
from dosepred.nas.strategies.kshot import KShotSupernet, width_channels
from dosepred.nas.supernet import make_supernet
from dosepred.networks.ops import SLOT_OPS
from dosepred.networks.searched import build_network

runner = CliRunner()
SPACE = SearchSpace((2, 4))
BUDGET = Budget(supernet_steps=8, batch_size=1, max_sweeps=1)


@pytest.fixture(scope="module")
def data(tiny_packs) -> SearchData:
    config = {**DEFAULTS["data"], "train": str(tiny_packs / "train"), "validation": str(tiny_packs / "validation"),
              "resolution": 16}
    return SearchData.from_config(config, seed=0)


def test_a_split_never_augmented_is_expanded_once_when_it_fits(tiny_packs, monkeypatch) -> None:
    config = {**DEFAULTS["data"], "train": str(tiny_packs / "train"), "validation": str(tiny_packs / "validation"),
              "resolution": 16, "augment": False}
    expanded = SearchData.from_config(config).train
    assert isinstance(expanded, ExpandedSamples)
    plain = PatientSamples.from_source(config["train"], resolution=16)
    batch, reference = expanded.batch([1, 0], [5, 6]), plain.batch([1, 0], None)
    assert batch.keys() == reference.keys() and all(torch.equal(batch[key], reference[key]) for key in batch)
    assert isinstance(SearchData.from_config({**config, "augment": True}).train, PatientSamples)
    monkeypatch.setattr(evaluator, "EXPAND_LIMIT_BYTES", expanded_bytes(plain) - 1)
    assert isinstance(SearchData.from_config(config).train, PatientSamples)  # too large: expanded per batch


@pytest.mark.parametrize("strategy", ["lenas", "random", "kshot", "gold", "fpnas"])
def test_every_strategy_searches_from_the_cli(strategy: str, tiny_packs, tmp_path: Path) -> None:
    run = tmp_path / strategy
    options = {"random": ["search.options.architectures=12"], "fpnas": ["search.options.final_samples=6"],
               "gold": ["search.options.prune_every=2", "search.options.threshold=0.6"]}.get(strategy, [])
    result = runner.invoke(app, ["search", "--strategy", strategy, "-o", str(run),
                                 f"data.train={tiny_packs / 'train'}", f"data.validation={tiny_packs / 'validation'}",
                                 "data.resolution=16", "search.channels=[2,4]", "search.supernet_steps=6",
                                 "search.max_sweeps=1", "search.teachers=2", "search.pool=4", *options])
    assert result.exit_code == 0, result.output
    ranked = json.loads((run / "ranked.json").read_text())
    scores = [entry["estimated_dose_score"] for entry in ranked]
    assert len(ranked) >= 2 and scores == sorted(scores) and all(np.isfinite(scores))
    counts = json.loads((run / "log.json").read_text())["counts"]
    assert counts["training_forward_passes"] == 6 and counts["evaluated_architectures"] >= len(ranked)
    teacher = json.loads((run / "teachers" / "teacher_1.json").read_text())
    build_network(genotype=teacher["genotype"], channels=teacher["channels"])  # a buildable architecture


def test_unknown_strategy_and_option_are_refused(tiny_packs, tmp_path: Path) -> None:
    assert set(strategy_names()) == {"lenas", "random", "kshot", "gold", "fpnas"}
    with pytest.raises(ValueError, match="has no option"):
        get_strategy("kshot", kk=3)
    result = runner.invoke(app, ["search", "--strategy", "nope", "-o", str(tmp_path / "x"),
                                 f"data.train={tiny_packs / 'train'}", f"data.validation={tiny_packs / 'validation'}"])
    assert result.exit_code == 2 and "unknown strategy 'nope'" in result.output


def test_kshot_lambda_is_on_the_simplex_and_depends_on_the_architecture(data: SearchData) -> None:
    torch.manual_seed(0)
    result = get_strategy("kshot", k=3, warmup_fraction=0.25, simplex_lr=0.05).search(SPACE, data, BUDGET)
    kshot: KShotSupernet = result.weights
    rng = np.random.default_rng(0)
    a, b = SPACE.sample(rng), SPACE.sample(rng)
    while a == b:
        b = SPACE.sample(rng)
    la, lb = kshot.lambdas(a, 2), kshot.lambdas(b, 2)
    for lam in (la, lb, kshot.lambdas(a, 0)):
        assert lam.shape == (4, 3) and bool((lam >= 0).all())
        torch.testing.assert_close(lam.sum(dim=1), torch.ones(4))
    assert not torch.allclose(la, lb) and not torch.allclose(la, kshot.lambdas(a, 0))
    # the path's weights are sum_k lambda_k W_k: a one-hot lambda runs replica k itself
    x = torch.randn(1, 10, 16, 16, 16)
    one_hot = torch.zeros(4, 3)
    one_hot[:, 1] = 1
    with torch.no_grad():
        torch.testing.assert_close(kshot(x, a, 2, one_hot), kshot.replicas[1](x, a))
    assert result.ranked[0]["channels"] in ([1, 2], [2, 3], [2, 4])


def test_kshot_with_k_1_is_plain_weight_sharing(data: SearchData) -> None:
    result = get_strategy("kshot", k=1, widths=[1.0]).search(SPACE, data, BUDGET)
    assert result.log[0]["simplex_steps"] == 0 and result.log[0]["weight_steps"] == BUDGET.supernet_steps
    assert len(result.weights.replicas) == 1


@pytest.mark.parametrize(("channels", "ratio"), [((4, 8, 8), 0.5), ((8, 16, 16), 0.75)])
def test_kshot_width_masking_runs_exactly_a_narrower_network(channels: tuple[int, ...], ratio: float) -> None:
    """No parameter beyond what the narrower network has (layer by layer, the squeeze-and-excitation's
    hidden units too: 6 // 4 = 1 at 8 x 0.75, not 0.75 x 8 // 4 = 2) may change the output at that width."""
    torch.manual_seed(0)
    space = SearchSpace(channels)
    kshot = KShotSupernet(space, k=2, widths=[ratio, 1.0]).eval()
    kept = {name: parameter.shape[0]
            for name, parameter in make_supernet(SearchSpace(tuple(width_channels(space, ratio)))).named_parameters()}
    genotype = space.sample(np.random.default_rng(4))
    for block in (*genotype["encoder"], *genotype["decoder"]):
        block["ops"] = ["se_conv3", "sep_conv3"]
    lambdas = torch.full((len(kshot.modules_in_order), 2), 0.5)
    x = torch.randn(1, 10, 16, 16, 16)
    with torch.no_grad():
        narrow, full = kshot(x, genotype, 0, lambdas), kshot(x, genotype, 1, lambdas)
        for replica in kshot.replicas:
            for name, parameter in replica.named_parameters():
                if parameter.ndim >= 1 and parameter.shape[0] > kept[name]:
                    parameter[kept[name]:] += 1.0
        torch.testing.assert_close(kshot(x, genotype, 0, lambdas), narrow)
        assert not torch.allclose(kshot(x, genotype, 1, lambdas), full)


@pytest.mark.parametrize(("strategy", "options"), [("gold", {"warmup_fraction": 0.0}), ("kshot", {"warmup_fraction": 0.0})])
def test_a_gradient_that_is_not_finite_moves_neither_gates_nor_simplex_net(data: SearchData, monkeypatch,
                                                                           strategy: str, options: dict) -> None:
    from dosepred.nas.supernet import SupernetTrainer

    finite = SupernetTrainer.path_loss
    monkeypatch.setattr(SupernetTrainer, "path_loss", lambda self, run, samples: finite(self, run, samples) * float("nan"))
    result = get_strategy(strategy, **options).search(SPACE, data, Budget(supernet_steps=2, batch_size=1, max_sweeps=1))
    network = result.weights
    extra = network.logits.parameters() if strategy == "gold" else network.simplex.parameters()
    assert all(torch.isfinite(parameter).all() for parameter in extra)


def test_gold_prunes_costly_ops_first_monotonically_and_the_cost_falls(data: SearchData) -> None:
    torch.manual_seed(0)
    strategy = get_strategy("gold", warmup_fraction=0.0, prune_every=1, threshold=0.4, max_pruned=3, mu_start=50.0,
                            gate_lr=0.2)
    result = strategy.search(SPACE, data, Budget(supernet_steps=8, batch_size=1))
    rounds = result.log[0]["rounds"]
    pruned = [op for r in rounds for op in r["pruned"]]
    assert pruned and len(pruned) == len(set(pruned))  # an op once pruned never comes back
    assert not any(op.endswith((":identity", ":residual", ":max_pool", ":avg_pool")) for op in pruned[:3])  # MACs-free ops survive the cost
    for before, after in zip(rounds, rounds[1:]):  # mu rises after a round that pruned too little
        if not after["pruned"]:
            assert after["mu"] == pytest.approx(before["mu"] * 1.5)
    points = result.log[1]["points"]
    assert [p["macs"] for p in points] == sorted((p["macs"] for p in points), reverse=True) and len(points) > 1
    front = result.log[2]["front"]
    assert [p["estimated_dose_score"] for p in front] == sorted((p["estimated_dose_score"] for p in front), reverse=True)
    for key, names in result.weights.alive.items():
        assert key.endswith("_residual") or len(names) >= 1  # every slot keeps an op


def test_gold_hard_pruning_leaves_one_op_per_slot(data: SearchData) -> None:
    result = get_strategy("gold", pruning="hard").search(SPACE, data, Budget(supernet_steps=3, batch_size=1))
    genotype = result.ranked[0]["genotype"]
    for kind in ("encoder", "decoder"):
        for block in genotype[kind]:
            assert all(isinstance(op, str) for op in block["ops"]) and isinstance(block["down" if kind == "encoder" else "up"], str)
    assert result.log[0]["rounds"] == []


def test_fpnas_sample_count_tracks_the_entropy() -> None:
    distribution = ArchitectureDistribution(SPACE)
    counts, entropies = [], []
    for sharpness in (0.0, 1.0, 2.0, 4.0, 8.0, 16.0):
        with torch.no_grad():
            for factors in distribution.factors:
                for logits in factors.values():
                    logits.copy_(sharpness * torch.linspace(0, 1, len(logits)))
        entropies.append(distribution.entropy())
        counts.append(sample_count(entropies[-1], distribution.max_entropy(), low=2, high=8))
    assert entropies == sorted(entropies, reverse=True)
    assert counts == sorted(counts, reverse=True) and counts[0] == 8 and counts[-1] == 2


def test_fpnas_factorised_to_joint_keeps_the_marginals() -> None:
    torch.manual_seed(0)
    distribution = ArchitectureDistribution(SPACE)
    with torch.no_grad():
        for factors in distribution.factors:
            for logits in factors.values():
                logits.normal_()
    before = [distribution.marginals(b) for b in range(len(SPACE.blocks))]
    genotype, log_prob = distribution.sample(np.random.default_rng(0))
    entropy = distribution.entropy()
    distribution.to_joint()
    assert distribution.is_joint
    for b, marginals in enumerate(before):
        for name, probabilities in distribution.marginals(b).items():
            torch.testing.assert_close(probabilities, marginals[name])
    assert abs(distribution.entropy() - entropy) < 1e-4
    _, joint_log_prob = distribution.sample(np.random.default_rng(0))
    torch.testing.assert_close(joint_log_prob.detach(), log_prob.detach())


def test_fpnas_adaptive_sampling_follows_the_entropy_within_the_budget(data: SearchData) -> None:
    result = get_strategy("fpnas", distribution_lr=0.5, final_samples=4).search(SPACE, data, Budget(supernet_steps=20, batch_size=1))
    trace = result.log[0]
    max_entropy = ArchitectureDistribution(SPACE).max_entropy()
    expected = [min(sample_count(h, max_entropy, low=2, high=8), 20 - sum(trace["samples_per_step"][:i]))
                for i, h in enumerate(trace["entropy"])]
    assert trace["samples_per_step"] == expected and sum(expected) == 20 == result.counts["training_forward_passes"]
    fixed = get_strategy("fpnas", adaptive=False, fixed_samples=4, final_samples=4).search(SPACE, data, Budget(supernet_steps=20, batch_size=1))
    assert fixed.log[0]["samples_per_step"] == [4] * 5


def test_fpnas_moves_probability_towards_the_lower_loss() -> None:
    distribution = ArchitectureDistribution(SPACE)
    optimizer = torch.optim.Adam(distribution.parameters(), lr=0.1)
    rng = np.random.default_rng(0)
    (good, good_log_p), (bad, bad_log_p) = distribution.sample(rng), distribution.sample(rng)
    assert good != bad
    before = float((good_log_p - bad_log_p).detach())
    distribution_step(optimizer, [good_log_p, bad_log_p], importance_weights([0.10, 0.20], temperature=0.02))
    assert float((distribution.log_prob(good) - distribution.log_prob(bad)).detach()) > before


@pytest.mark.parametrize("strategy", ["gold", "fpnas", "kshot"])
def test_strategies_run_at_depth_3(strategy: str, data: SearchData) -> None:
    options = {"fpnas": {"final_samples": 2, "cost_weight": 0.1}, "kshot": {"rescored": 1}}.get(strategy, {})
    result = get_strategy(strategy, **options).search(SearchSpace((2, 2, 2, 2)), data, Budget(supernet_steps=2, batch_size=1, max_sweeps=1))
    assert result.ranked and np.isfinite(result.ranked[0]["estimated_dose_score"])


def test_enlarged_genotypes_sum_their_ops() -> None:
    genotype = SPACE.reference()
    genotype["encoder"][0]["ops"] = [["conv3", "identity"], "se_conv3"]
    genotype["decoder"][0]["up"] = ["transposed_conv", "trilinear_conv"]
    network = build_network(genotype=genotype, channels=SPACE.channels)
    assert network(torch.randn(1, 10, 8, 8, 8)).shape == (1, 1, 8, 8, 8)
    genotype["encoder"][0]["ops"] = [[], "conv3"]
    with pytest.raises(ValueError, match="encoder block 0: ops"):
        build_network(genotype=genotype, channels=SPACE.channels)


def test_cost_counts_parameters_and_scales_macs_with_the_volume() -> None:
    genotype = SPACE.reference()
    small, large = architecture_cost(genotype, SPACE.channels, 8), architecture_cost(genotype, SPACE.channels, 16)
    assert large["macs"] == 8 * small["macs"] > 0
    assert small["parameters"] == sum(p.numel() for p in build_network(genotype=genotype, channels=SPACE.channels).parameters())
    # a stride-2 stem runs the blocks on an eighth of the voxels; beam-aware inputs add two channels
    halved = architecture_cost(genotype, SPACE.channels, 16, in_channels=12, stem_stride=2)
    network = build_network(genotype=genotype, channels=SPACE.channels, in_channels=12, stem_stride=2)
    assert halved["parameters"] == sum(p.numel() for p in network.parameters()) > small["parameters"]
    assert small["macs"] < halved["macs"] < large["macs"]


def test_fair_paths_use_every_slot_op_of_every_block_exactly_once() -> None:
    space = SearchSpace((2, 4, 8))
    paths = space.fair_paths(np.random.default_rng(5))
    assert len(paths) == len(SLOT_OPS)
    for kind, index in space.blocks:
        for slot in range(2):
            assert sorted(path[kind][index]["ops"][slot] for path in paths) == sorted(SLOT_OPS)
        residuals = [path[kind][index]["residual"] for path in paths]
        assert abs(residuals.count(True) - residuals.count(False)) == 1  # as even as five allows
    for path in paths:
        build_network(genotype=path, channels=space.channels)  # each one a valid architecture


def test_fair_sampling_spends_the_same_forward_passes_five_paths_a_step(data: SearchData) -> None:
    budget = Budget(supernet_steps=10, batch_size=1, max_sweeps=1)
    uniform = get_strategy("lenas").search(SPACE, data, budget)
    fair = get_strategy("lenas", sampling="fair").search(SPACE, data, budget)
    assert uniform.counts["training_forward_passes"] == fair.counts["training_forward_passes"] == 10
    assert (uniform.log[0]["steps"], fair.log[0]["steps"]) == (10, 10 // len(SLOT_OPS))
    assert fair.counts["sampled_architectures"] == 10  # five distinct paths a step
    with pytest.raises(ValueError, match="unknown path sampling"):
        get_strategy("lenas", sampling="sandwich").search(SPACE, data, budget)


def test_the_diversity_hinge_pushes_the_next_architecture_away(data: SearchData) -> None:
    strategy = get_strategy("lenas", architectures=2, diversity_margin=0.05, hinge_weight=100.0)
    result = strategy.search(SPACE, data, BUDGET)
    first, second = result.log[-1]["architectures"]
    assert first["relative_distances"][0] == 0 and second["relative_distances"][1] == 0
    apart = first["relative_distances"][1]
    assert apart >= 0.05  # the hinge held: the second prediction is at least the margin away from the first
    assert strategy.hinge({"relative_distances": [apart]}) == 0
    assert strategy.hinge({"relative_distances": [0.01, 0.0]}) == pytest.approx(100.0 * (0.04 + 0.05))
    plain = get_strategy("lenas", architectures=2, hinge_weight=0.0).search(SPACE, data, BUDGET)
    assert plain.log[-1]["architectures"][0]["relative_distances"][1] == 0  # without it: the same one twice


def test_a_stored_score_book_never_predicts_an_architecture_twice(data: SearchData, tmp_path: Path) -> None:
    torch.manual_seed(0)
    weights = build_network(genotype=SPACE.reference(), channels=SPACE.channels, in_channels=data.validation["image"].shape[1])
    entries = [{"genotype": SPACE.reference()}, *({"genotype": SPACE.sample(np.random.default_rng(seed))} for seed in (1, 2))]
    predicted: list[int] = []

    def path(entry: dict) -> torch.nn.Module:  # each entry its own prediction: the weights' output, scaled
        number = entries.index(entry)
        predicted.append(number)
        return torch.nn.Sequential(weights, ScaledBy(1.0 + number))

    def book(print_: str = "same weights and data") -> ScoreBook:
        return ScoreBook(Evaluator(data, device=torch.device("cpu")), path,
                         store=ScoreStore(tmp_path / "scores.jsonl", print_))

    a, b, c = entries
    first = book()
    scores = first(a), first(b)
    first.add_reference(a)
    distance = first.record(b)["relative_distances"]
    assert predicted == [0, 1, 0, 1] and scores[0] != scores[1] and distance[0] > 0
    second = book()
    assert second(a) == scores[0] and [e["genotype"] for e in second.ranked()] == [a["genotype"]]  # only what it asked
    second.add_reference(a)
    assert second.record(b)["relative_distances"] == distance and second(b) == scores[1]
    assert predicted == [0, 1, 0, 1, 0]  # only the reference's prediction, which is not stored
    with (tmp_path / "scores.jsonl").open("a") as file:
        file.write('{"key": "cut sh')  # an interruption mid-line
    book()(c)
    assert book()(c) == book()(c) and predicted[5:] == [2]  # the record after the cut line reads back
    assert book("other weights or data")(a) == scores[0] and predicted[6:] == [0]  # a fresh store
    assert len((tmp_path / "scores.jsonl").read_text().splitlines()) == 2


class ScaledBy(torch.nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def test_the_fingerprint_tells_weights_data_and_strategy_settings_apart(data: SearchData) -> None:
    torch.manual_seed(0)
    weights = build_network(genotype=SPACE.reference(), channels=SPACE.channels, in_channels=data.validation["image"].shape[1])
    evaluator = Evaluator(data, device=torch.device("cpu"))
    same = fingerprint(weights, evaluator, "lenas {}")
    assert fingerprint(weights, evaluator, "lenas {}") == same
    assert fingerprint(weights, evaluator, "kshot {}") != same
    other = Evaluator(data, device=torch.device("cpu"))
    other.batch = {**other.batch, "dose": other.batch["dose"] + 1}
    assert fingerprint(weights, other, "lenas {}") != same
    with torch.no_grad():
        next(weights.parameters()).add_(1.0)
    assert fingerprint(weights, evaluator, "lenas {}") != same


def test_relative_distance_is_the_difference_over_the_mean_dose() -> None:
    mask = torch.ones(1, 1, 2, 2, 2)
    a, b = torch.full((1, 1, 2, 2, 2), 9.0), torch.full((1, 1, 2, 2, 2), 11.0)
    assert relative_distance(a, b, mask) == pytest.approx(0.2)
    assert relative_distance(a, a, mask) == 0


def test_a_random_search_that_would_score_nothing_is_refused_before_it_trains() -> None:
    with pytest.raises(ValueError, match="scores no architecture"):
        get_strategy("random").search(SearchSpace((2, 4)), None, Budget(supernet_steps=2, max_sweeps=0))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="scores no architecture"):  # 0 asked for is 0, not the default
        get_strategy("random", architectures=0).search(SearchSpace((2, 4)), None, Budget(supernet_steps=2))  # type: ignore[arg-type]
