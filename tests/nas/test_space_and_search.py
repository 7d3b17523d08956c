from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dosepred.cli import app
from dosepred.nas.evaluator import ScoreStore
from dosepred.nas.selection import describe_set, select_teachers
from dosepred.nas.space import SearchSpace
from dosepred.nas.supernet import make_supernet
from dosepred.networks import create_network
from dosepred.networks.ops import DOWN_OPS, SLOT_OPS, UP_OPS
from dosepred.networks.searched import build_network

runner = CliRunner()
SPACE = SearchSpace((4, 8, 16))


@pytest.mark.parametrize("op", sorted(SLOT_OPS))
@pytest.mark.parametrize("kind", ["encoder", "decoder"])
@pytest.mark.parametrize("slot", [0, 1])
def test_every_op_builds_and_runs_in_every_slot(op: str, kind: str, slot: int) -> None:
    genotype = SPACE.reference()
    for block in genotype[kind]:
        block["ops"] = [op if s == slot else "conv3" for s in range(2)]
    network = build_network(genotype=json.loads(json.dumps(genotype)), channels=SPACE.channels)
    output = network(torch.randn(1, 10, 8, 8, 8))
    assert output.shape == (1, 1, 8, 8, 8)
    output.mean().backward()


@pytest.mark.parametrize("down", sorted(DOWN_OPS))
@pytest.mark.parametrize("up", sorted(UP_OPS))
@pytest.mark.parametrize("residual", [False, True])
def test_every_resampling_op_and_residual_setting_runs(down: str, up: str, residual: bool) -> None:
    genotype = SPACE.reference()
    for block in genotype["encoder"]:
        block.update(down=down, residual=residual)
    for block in genotype["decoder"]:
        block.update(up=up, residual=residual)
    assert build_network(genotype=genotype, channels=SPACE.channels)(torch.randn(2, 10, 8, 8, 8)).shape == (2, 1, 8, 8, 8)


def test_a_stride_two_stem_runs_the_blocks_at_half_the_grid_and_returns_the_full_grid() -> None:
    genotype = SPACE.sample(np.random.default_rng(5))
    network = build_network(genotype=genotype, channels=SPACE.channels, stem_stride=2)
    sizes: list[tuple[int, ...]] = []
    network.encoder[0].register_forward_hook(lambda module, inputs, output: sizes.append(tuple(inputs[0].shape[2:])))
    assert network(torch.randn(1, 10, 16, 16, 16)).shape == (1, 1, 16, 16, 16)
    assert sizes == [(8, 8, 8)]  # the searched blocks see the grid they were searched at, halved
    with pytest.raises(ValueError, match="stem_stride"):
        build_network(genotype=genotype, channels=SPACE.channels, stem_stride=4)


@pytest.mark.parametrize("stem_stride", [1, 2])
def test_a_detached_uncertainty_channel_trains_only_its_readout(stem_stride: int) -> None:
    genotype = SPACE.sample(np.random.default_rng(2))
    plain = build_network(genotype=genotype, channels=SPACE.channels, out_channels=2, stem_stride=stem_stride)
    detached = build_network(genotype=genotype, channels=SPACE.channels, out_channels=2, stem_stride=stem_stride,
                             detached_uncertainty=True)
    detached.load_state_dict(plain.state_dict())  # the same parameters: weights move between the two
    x = torch.randn(1, 10, 16, 16, 16)
    assert torch.allclose(plain(x), detached(x), atol=1e-6)
    readout = detached.head[-1] if stem_stride == 2 else detached.head
    for network, trunk_moves in ((plain, True), (detached, False)):
        network.zero_grad()
        network(x)[:, 1].abs().mean().backward()  # a loss on the uncertainty channel alone
        assert (network.stem[0].weight.grad.abs().sum() > 0) == trunk_moves
    assert readout.weight.grad[1].abs().sum() > 0 and readout.weight.grad[0].abs().sum() == 0
    with pytest.raises(ValueError, match="two output channels"):
        build_network(genotype=genotype, channels=SPACE.channels, detached_uncertainty=True)


def test_genotype_json_round_trip_builds_the_same_network() -> None:
    genotype = SPACE.sample(np.random.default_rng(3))
    text = json.dumps({"genotype": genotype})
    torch.manual_seed(0)
    a = create_network("searched", genotype=genotype, channels=list(SPACE.channels))
    torch.manual_seed(0)
    b = create_network("searched", genotype=json.loads(text)["genotype"], channels=list(SPACE.channels))
    x = torch.randn(1, 10, 8, 8, 8)
    assert torch.equal(a(x), b(x))


def test_blocks_choose_independently_and_the_space_is_counted() -> None:
    space = SearchSpace((16, 32, 64, 128))
    assert space.size() == 150**3 * 100**3
    genotype = space.sample(np.random.default_rng(0))
    assert len({json.dumps(b, sort_keys=True) for b in genotype["encoder"]}) > 1
    with pytest.raises(ValueError, match="encoder block 0: ops"):
        bad = space.reference()
        bad["encoder"][0]["ops"] = ["conv3", "nope"]
        build_network(genotype=bad, channels=space.channels)


@pytest.mark.parametrize("in_channels, stem_stride", [(10, 1), (12, 2)])
def test_a_supernet_path_equals_the_stand_alone_network_with_its_weights(in_channels: int, stem_stride: int) -> None:
    space = SearchSpace(SPACE.channels, in_channels=in_channels, stem_stride=stem_stride)
    supernet = make_supernet(space).eval()
    genotype = space.sample(np.random.default_rng(1))
    network = build_network(genotype=genotype, channels=space.channels, in_channels=in_channels,
                            stem_stride=stem_stride).eval()
    weights = supernet.state_dict()
    network.load_state_dict({name: weights[name] for name in network.state_dict()})
    x = torch.randn(1, in_channels, 16, 16, 16)
    assert network(x).shape[2:] == x.shape[2:]
    assert torch.allclose(network(x), supernet(x, genotype))


def test_a_search_config_with_beam_angles_searches_on_beam_aware_inputs(tiny_packs) -> None:
    from dosepred.engine.config import SEARCH_DEFAULTS, load_config
    from dosepred.nas.evaluator import SearchData

    config = load_config(None, [f"data.train={tiny_packs / 'train'}", f"data.validation={tiny_packs / 'validation'}",
                                "data.resolution=16", "data.augment=true", "data.beam_angles=[0,120,240]",
                                "search.channels=[2,4]"], defaults=SEARCH_DEFAULTS)
    space = SearchSpace.from_config(config)
    assert space.in_channels == 12
    data = SearchData.from_config(config["data"], validation_patients=1)
    assert data.validation["image"].shape[1] == data.train.batch([0], [7])["image"].shape[1] == 12
    assert data.train.augmentation.beam_step_deg == 120  # beam-spacing rotations step by the config's spacing
    assert make_supernet(space)(data.validation["image"], space.reference()).shape[2:] == (16, 16, 16)


def test_estimates_on_the_fast_path_are_bf16_and_close_to_fp32(tiny_packs) -> None:
    from dosepred.engine.config import SEARCH_DEFAULTS, load_config
    from dosepred.nas.evaluator import Evaluator, SearchData, fingerprint
    from dosepred.nas.supernet import SupernetPath

    config = load_config(None, [f"data.train={tiny_packs / 'train'}", f"data.validation={tiny_packs / 'validation'}",
                                "data.resolution=16"], defaults=SEARCH_DEFAULTS)
    data = SearchData.from_config(config["data"], validation_patients=2)
    torch.manual_seed(0)
    supernet = make_supernet(SPACE)
    path = SupernetPath(supernet, SPACE.reference())
    exact, fast = (Evaluator(data, device=torch.device("cpu"), fast=flag) for flag in (False, True))
    assert fast.batch["image"].is_contiguous(memory_format=torch.channels_last_3d)
    assert fast.predict(path).dtype == torch.float32  # scored in fp32 either way
    fast_score, exact_score = fast.evaluate(path), exact.evaluate(path)
    assert fast_score != exact_score and abs(fast_score - exact_score) < 0.01 * exact_score  # bf16: moved, slightly
    # an fp32 store and a bf16 store of the same weights never mix
    assert fingerprint(supernet, exact, "lenas") != fingerprint(supernet, fast, "lenas")


def test_selection_prefers_a_diverse_set_over_near_duplicates() -> None:
    mask = torch.ones(1, 1, 4, 4, 4)
    base = torch.zeros(1, 1, 4, 4, 4)
    # Ranked best first: three near-copies of the best, then a slightly weaker but different network.
    predictions = [base, base + 0.01, base + 0.02, base + 5.0]
    scores = [1.00, 1.01, 1.02, 1.30]
    plain = select_teachers(scores, predictions, mask, k=2, diversity_weight=0.0)
    diverse = select_teachers(scores, predictions, mask, k=2, diversity_weight=0.5)
    assert plain.chosen == [0, 1]
    assert diverse.chosen == [0, 3]
    assert diverse.diversity > plain.diversity == plain.top_k_diversity


def test_an_ensemble_of_errors_in_opposite_directions_beats_each_member() -> None:
    mask = torch.ones(1, 1, 4, 4, 4)
    reference = torch.full((1, 1, 4, 4, 4), 10.0)
    predictions = [reference + 1.0, reference - 3.0, reference + 3.0]

    def score(prediction: torch.Tensor) -> float:
        return float((prediction - reference).abs().mean())

    assert describe_set([1, 2], predictions, mask, score) == {
        "mean_pairwise_distance_gy": 6.0, "ensemble_estimated_dose_score": 0.0, "best_member_estimated_dose_score": 3.0}
    assert describe_set([0, 1, 2], predictions, mask, score)["ensemble_estimated_dose_score"] == pytest.approx(1 / 3)


def test_search_runs_end_to_end_and_a_teacher_trains(tiny_packs, tmp_path: Path) -> None:
    run = tmp_path / "search"
    result = runner.invoke(app, ["search", "--strategy", "lenas", "-o", str(run),
                                 f"data.train={tiny_packs / 'train'}", f"data.validation={tiny_packs / 'validation'}",
                                 "data.resolution=16", "search.channels=[2,4]", "search.supernet_steps=2",
                                 "search.max_sweeps=1", "search.stem_stride=2",
                                 "search.teachers=2", "search.pool=4"])
    assert result.exit_code == 0, result.output
    ranked = json.loads((run / "ranked.json").read_text())
    assert len(ranked) == 150 + 100 - 1  # one sweep over both blocks' choices (the start is met twice)
    assert [r["estimated_dose_score"] for r in ranked] == sorted(r["estimated_dose_score"] for r in ranked)
    teacher = json.loads((run / "teachers" / "teacher_1.json").read_text())
    assert "genotype" in teacher and teacher["rank"] == 1 and teacher["stem_stride"] == 2
    selected = json.loads((run / "diversity.json").read_text())["selected"]
    assert selected["ranks"][0] == 1
    assert selected["best_member_estimated_dose_score"] == pytest.approx(ranked[0]["estimated_dose_score"], rel=1e-4)
    result = runner.invoke(app, ["train", "-o", str(tmp_path / "teacher"), "--genotype", str(run / "teachers" / "teacher_1.json"),
                                 f"data.train={tiny_packs / 'train'}", f"data.validation={tiny_packs / 'validation'}",
                                 "data.resolution=16", "optim.steps=1", "validate_every=1"])
    assert result.exit_code == 0, result.output
    network = json.loads((tmp_path / "teacher" / "best" / "config.json").read_text())["network"]
    assert network["name"] == "searched" and network["stem_stride"] == 2  # the teacher is the searched network


@pytest.mark.parametrize("strategy, options", [
    ("lenas", []), ("kshot", ["search.options.warmup_fraction=0.2"]),
    ("gold", ["search.options.prune_every=10", "search.options.threshold=0.6"]),
    ("fpnas", ["search.options.final_samples=4", "search.options.adaptive=false", "search.options.fixed_samples=1"]),
])
def test_an_interrupted_search_resumes_its_supernet_exactly(strategy: str, options: list[str], tiny_packs,
                                                            tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from dosepred.engine.config import SEARCH_DEFAULTS, load_config
    from dosepred.nas.run import run_search

    config = load_config(None, [f"data.train={tiny_packs / 'train'}", f"data.validation={tiny_packs / 'validation'}",
                                "data.resolution=16", "search.channels=[2,4]", "search.supernet_steps=130",
                                "search.max_sweeps=1", "search.teachers=2", "search.pool=4",
                                f"search.strategy={strategy}", *options], defaults=SEARCH_DEFAULTS)
    run_search(config, tmp_path / "straight")
    reports: list[int] = []

    def interrupt(phase: str, done: int, total: int) -> None:
        if total == 130 and done < 130:
            reports.append(done)
            if len(reports) == 110:  # after the checkpoint at loop step 100
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_search(config, tmp_path / "resumed", progress=interrupt)
    with pytest.raises(FileExistsError, match="--resume continues it"):
        run_search(config, tmp_path / "resumed")
    run_search(config, tmp_path / "resumed", resume=True)
    assert (tmp_path / "resumed" / "supernet" / "metrics.csv").is_file()
    straight, resumed = (load_file(tmp_path / run / "supernet.safetensors") for run in ("straight", "resumed"))
    assert all(torch.equal(straight[name], resumed[name]) for name in straight)
    logs = [json.loads((tmp_path / run / "log.json").read_text()) for run in ("straight", "resumed")]
    assert logs[0]["counts"] == logs[1]["counts"]
    assert (tmp_path / "straight" / "ranked.json").read_text() == (tmp_path / "resumed" / "ranked.json").read_text()


def test_the_hinge_searches_finds_join_the_teacher_pool(tiny_packs, tmp_path: Path, monkeypatch) -> None:
    run = tmp_path / "search"
    result = runner.invoke(app, ["search", "--strategy", "lenas", "-o", str(run),
                                 f"data.train={tiny_packs / 'train'}", f"data.validation={tiny_packs / 'validation'}",
                                 "data.resolution=16", "search.channels=[2,4]", "search.supernet_steps=2",
                                 "search.max_sweeps=1", "search.teachers=2", "search.pool=1",
                                 "search.options.architectures=2", "search.options.diversity_margin=0.05",
                                 "search.options.hinge_weight=100"])
    assert result.exit_code == 0, result.output
    log = json.loads((run / "log.json").read_text())["log"]
    found = log[-1]["architectures"]
    assert log[-1]["phase"] == "found" and len(found) == 2 and found[0]["relative_distances"][1] >= 0.05
    ranked = json.loads((run / "ranked.json").read_text())
    teachers = [json.loads((run / "teachers" / f"teacher_{n}.json").read_text()) for n in (1, 2)]
    assert teachers[0]["rank"] == 1  # the pool of one best, plus the hinge search's find
    assert teachers[1]["rank"] > 1 and ranked[teachers[1]["rank"] - 1]["genotype"] == teachers[1]["genotype"]
    assert teachers[1]["estimated_dose_score"] == pytest.approx(found[1]["estimated_dose_score"])
    report = json.loads((run / "diversity.json").read_text())  # the found pair reported as a set of its own
    assert report["found"]["ranks"] == sorted([1, teachers[1]["rank"]])
    assert report["found"]["mean_pairwise_distance_gy"] > 0
    # resumed, the search reads every estimate and distance from its store: none is predicted again
    saved: list[str] = []
    monkeypatch.setattr(ScoreStore, "save", lambda store, key, *_: saved.append(key))
    resumed = runner.invoke(app, ["search", "-o", str(run), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert saved == [] and len((run / "scores.jsonl").read_text().splitlines()) > len(ranked)
    assert json.loads((run / "log.json").read_text())["log"][1:] == log[1:]  # the same sweeps and finds


def test_resume_keeps_the_searchs_own_strategy_and_config(tmp_path: Path) -> None:
    from dosepred.engine.config import SEARCH_DEFAULTS, load_config, save_config

    run = tmp_path / "run"
    run.mkdir()
    save_config(load_config(None, ["search.supernet_steps=7"], defaults=SEARCH_DEFAULTS), run / "config.yaml")
    before = (run / "config.yaml").read_text()
    result = runner.invoke(app, ["search", "-o", str(run), "--resume", "--strategy", "random"])
    assert result.exit_code == 2 and "holds a lenas search" in " ".join(result.output.split()), result.output
    assert (run / "config.yaml").read_text() == before  # untouched: a plain --resume still continues it
