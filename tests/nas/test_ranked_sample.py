"""The stand-alone ground truth's sample spread over a search's ranking (benchmarks/nas_standalone.py --ranked)
and the merge of its per-seed results files; a search's own estimates read from its ranked list."""

from __future__ import annotations

import math
import re
import shutil

import numpy as np
import pytest
from scipy.stats import kendalltau

from benchmarks.nas_standalone import merge_results, ranked_sample, seed_table, tau_ceiling
from dosepred.devices import cpu_has_bf16


def test_the_sample_takes_first_last_and_evenly_spaced_ranks() -> None:
    ranked = [{"rank": rank, "genotype": {"rank": rank}} for rank in range(1, 102)]
    assert [g["rank"] for g in ranked_sample(5, ranked)] == [1, 26, 51, 76, 101]


@pytest.mark.parametrize("count, length", [(1, 10), (11, 10)])
def test_a_sample_the_ranking_cannot_hold_is_refused(count: int, length: int) -> None:
    with pytest.raises(ValueError, match="cannot spread"):
        ranked_sample(count, [{"genotype": {}}] * length)


def test_per_seed_files_merge_into_one_table_ordered_by_seed() -> None:
    def part(seed: int, architectures: int) -> dict:
        return {"recipe": "r", "architectures": [{"genotype": {"n": n}, "parameters": n, "runs": [{"seed": seed}]}
                                                 for n in range(architectures)]}

    table = {"architectures": []}
    for piece in (part(1, 2), part(0, 3), part(1, 2)):  # merging a file twice adds nothing
        merge_results(table, piece)
    assert [[run["seed"] for run in a["runs"]] for a in table["architectures"]] == [[0, 1], [0, 1], [0]]
    assert "networks" not in table  # older files have no record of them
    merge_results(table, {**part(2, 1), "networks": {"channels": [4, 8, 16, 32]}})
    assert table["networks"] == {"channels": [4, 8, 16, 32]}
    with pytest.raises(ValueError, match="another recipe"):
        merge_results(table, {**part(2, 1), "recipe": "other"})
    with pytest.raises(ValueError, match="architecture 0 differs"):
        merge_results(table, {"recipe": "r", "architectures": [{"genotype": {"n": 9}, "runs": []}]})


def test_a_searchs_own_estimates_are_read_by_genotype() -> None:
    from benchmarks.nas_ranking import ranked_estimates

    ranked = [{"genotype": {"n": n}, "estimated_dose_score": 10.0 + n} for n in range(5)]
    assert ranked_estimates(ranked, [{"n": 3}, {"n": 0}]) == [13.0, 10.0]
    # K-shot ranks its best again at narrower widths in the same list: those are other networks' estimates
    kshot = [{**entry, "channels": [8, 16]} for entry in ranked] + [{"genotype": {"n": 3}, "channels": [4, 8],
                                                                     "estimated_dose_score": 99.0}]
    assert ranked_estimates(kshot, [{"n": 3}]) == [13.0]
    assert [genotype["n"] for genotype in ranked_sample(2, kshot)] == [0, 4]
    with pytest.raises(ValueError, match=r"architectures \[1\] .* not in the ranked list"):
        ranked_estimates(ranked, [{"n": 0}, {"n": 7}])


def test_a_shorter_stand_alone_table_estimates_by_its_seed_mean() -> None:
    from benchmarks.nas_ranking import low_fidelity_estimates

    table = {"architectures": [{"genotype": {"n": n}, "runs": [{"seed": 2, "dose_score": 5.0 + n},
                                                              {"seed": 3, "dose_score": 6.0 + n}]} for n in range(3)]}
    assert low_fidelity_estimates(table, [{"n": 2}, {"n": 0}]) == [7.5, 5.5]
    with pytest.raises(ValueError, match=r"architectures \[1\] .* no run"):
        low_fidelity_estimates(table, [{"n": 0}, {"n": 7}])
    table["architectures"][1]["runs"] = []
    with pytest.raises(ValueError, match=r"architectures \[1\] .* no run"):
        low_fidelity_estimates(table, [{"n": 0}, {"n": 1}])


def test_two_shorter_tables_that_would_share_a_label_are_refused(tmp_path, monkeypatch, capsys) -> None:
    import json
    import sys

    from benchmarks import nas_ranking

    truth = tmp_path / "truth.json"
    truth.write_text(json.dumps({"recipe": "tiny", "architectures": [
        {"genotype": {"n": n}, "runs": [{"seed": s, "dose_score": float(n + s)} for s in (0, 1)]} for n in range(3)]}))
    shorter = {"recipe": "150 steps of tiny", "architectures": [{"genotype": {"n": n}, "runs": [
        {"seed": 2, "dose_score": float(n)}]} for n in range(3)]}
    for name in ("a.json", "b.json"):  # e.g. from two supernets' weights, or at two grids
        (tmp_path / name).write_text(json.dumps(shorter))
    monkeypatch.setattr(sys, "argv", ["nas_ranking", "--standalone", str(truth), "--supernet-passes", "0",
                                      "--proxy-seeds", "0", "--low-fidelity", str(tmp_path / "a.json"),
                                      str(tmp_path / "b.json"), "--json", str(tmp_path / "ranking.json")])
    with pytest.raises(SystemExit):
        nas_ranking.main()
    assert "same steps, start and seeds" in capsys.readouterr().err


def recipe_args(*arguments: str):
    import argparse

    from benchmarks.nas_standalone import add_recipe_arguments

    parser = argparse.ArgumentParser()
    add_recipe_arguments(parser)
    return parser.parse_args(list(arguments))


def test_the_default_recipe_is_described_as_before() -> None:
    from benchmarks.nas_standalone import Recipe

    recipe = Recipe.from_args(recipe_args("--steps", "1000"))
    assert recipe.describe() == ("1000 steps, batch 2, AdamW lr 0.002 (warm-up 20, cosine), masked L1, no augmentation, "
                                 "64^3, channels [8, 16, 32, 64]; scored on every validation patient at 128^3")


def test_a_recipe_from_a_training_config_trains_with_it(tiny_packs, tmp_path) -> None:
    from benchmarks.nas_standalone import Recipe
    from dosepred.nas.space import SearchSpace

    file = tmp_path / "full.yaml"
    file.write_text("data: {resolution: 32, augment: true, beam_angles: [0, 120, 240]}\n"
                    "loss: {dvh_weight: 0.3}\noptim: {batch_size: 1, lr: 0.001, warmup_steps: 1}\n")
    recipe = Recipe.from_args(recipe_args("--recipe-config", str(file), "--steps", "2", "--widths", "4", "8", "16", "32",
                                          "--stem-stride", "2", "--threads", "1", "--train", str(tiny_packs / "train"),
                                          "--validation", str(tiny_packs / "validation")))
    assert (recipe.lr, recipe.resolution, recipe.augment) == (0.001, 32, True)  # read from the file
    assert recipe.describe().startswith(f"2 steps of {file} (sha256 ")
    assert "channels [4, 8, 16, 32], stem stride 2" in recipe.describe()
    assert recipe.networks() == {"channels": [4, 8, 16, 32], "stem_stride": 2, "resolution": 32,
                                 "beam_angles": [0, 120, 240]}
    config = recipe.config(seed=3)
    assert config["seed"] == 3 and config["loss"]["dvh_weight"] == 0.3 and config["data"]["beam_angles"] == [0, 120, 240]
    genotype = SearchSpace((4, 8, 16, 32)).reference()
    run = recipe.run(genotype, 3, tmp_path / "run")
    assert run["seed"] == 3 and run["dose_score"] > 0
    assert run["precision"] == ("bf16" if cpu_has_bf16() else "fp32") and run["hardware"].startswith("CPU ")
    described = recipe.describe()
    file.write_text(file.read_text() + "# edited\n")
    assert recipe.describe() != described  # another config file is another recipe
    with pytest.raises(ValueError, match="--lr, --resolution: with --recipe-config"):
        Recipe.from_args(recipe_args("--recipe-config", str(file), "--lr", "0.1", "--resolution", "64"))


def test_a_stopped_stand_alone_run_resumes_from_its_checkpoint(tiny_packs, tmp_path, monkeypatch) -> None:
    from benchmarks import nas_standalone
    from benchmarks.nas_standalone import Recipe, SharedDataTrainer
    from dosepred.nas.space import SearchSpace

    monkeypatch.setattr(nas_standalone, "CHECKPOINT_EVERY", 2)
    recipe = Recipe.from_args(recipe_args("--steps", "4", "--resolution", "32", "--widths", "4", "8", "16", "32",
                                          "--threads", "1", "--train", str(tiny_packs / "train"),
                                          "--validation", str(tiny_packs / "validation")))
    genotype = SearchSpace((4, 8, 16, 32)).reference()
    straight = recipe.run(genotype, 0, tmp_path / "straight")

    class SessionEnd(Exception):
        pass

    trained, stop = [], [True]
    train_step = SharedDataTrainer.train_step

    def stopped_in_step_3(self, batch):  # noqa: ANN001, ANN202
        if self.step == 2 and stop:  # the session ends after the checkpoint at step 2
            stop.clear()
            raise SessionEnd
        trained.append(self.step + 1)
        return train_step(self, batch)

    monkeypatch.setattr(SharedDataTrainer, "train_step", stopped_in_step_3)
    with pytest.raises(SessionEnd):
        recipe.run(genotype, 0, tmp_path / "run")
    resumed = recipe.run(genotype, 0, tmp_path / "run")
    assert trained == [1, 2, 3, 4]  # steps 1 and 2 were not trained again
    assert (resumed["dose_score"], resumed["dvh_score"]) == (straight["dose_score"], straight["dvh_score"])
    assert resumed["seconds"] > 0
    other = Recipe.from_args(recipe_args("--steps", "3", "--resolution", "32", "--widths", "4", "8", "16", "32",
                                         "--threads", "1", "--train", str(tiny_packs / "train"),
                                         "--validation", str(tiny_packs / "validation")))
    trained.clear()
    other.run(genotype, 0, tmp_path / "run")  # another recipe: the folder's run is replaced, not continued
    assert trained == [1, 2, 3]


def test_the_proxies_run_on_the_ground_truths_networks_and_inputs(tiny_packs) -> None:
    from benchmarks.nas_ranking import proxy_estimates
    from dosepred.data.dataset import PatientSamples
    from dosepred.io import sources
    from dosepred.nas.space import SearchSpace
    from dosepred.networks.searched import build_network

    beams = [0, 120, 240]
    two = PatientSamples(sources.find_patients(tiny_packs / "train")[:2], resolution=32, beam_angles=beams).batch([0, 1], None)
    space = SearchSpace((4, 8, 16, 32))
    genotypes = [space.reference(), space.sample(np.random.default_rng(1))]
    estimates = proxy_estimates(genotypes, (4, 8, 16, 32), two, seeds=1, stem_stride=2)
    trained = [build_network(genotype=g, channels=(4, 8, 16, 32), in_channels=two["image"].shape[1], stem_stride=2)
               for g in genotypes]
    assert estimates["parameters"] == [-float(sum(p.numel() for p in n.parameters())) for n in trained]
    assert all(math.isfinite(value) for values in estimates.values() for value in values)


def test_a_seed_that_favours_every_architecture_is_a_block_not_noise() -> None:
    from scipy.stats import f_oneway

    from benchmarks.nas_standalone import blocked_anova

    # seed 1 is 0.3 Gy easier for every architecture; the architectures differ by 0.1 Gy steps, consistently
    scores = np.array([[4.0, 3.7], [4.1, 3.81], [4.2, 3.89], [4.3, 4.02]])
    assert f_oneway(*scores).pvalue > 0.3  # counted as noise, the seed hides the order
    statistic, p_value = blocked_anova(scores)
    assert p_value < 0.001 and statistic > 100
    assert blocked_anova(np.array([[4.0, 3.7], [3.7, 4.0]]))[1] > 0.5  # orders that disagree: no effect


def test_the_truth_is_the_mean_over_seeds_that_every_architecture_has() -> None:
    results = {"architectures": [{"runs": [{"seed": s, "dose_score": 10.0 * n + s} for s in seeds]}
                                 for n, seeds in enumerate([(0, 1, 2), (0, 1), (1, 0, 2), (0,)])]}
    kept, seeds, scores = seed_table(results)
    assert seeds == [0, 1] and len(kept) == 3 and scores.tolist() == [[0, 1], [10, 11], [20, 21]]
    kept, seeds, scores = seed_table(results, [0, 1, 2])  # a seed only some have: the others are left out
    assert [results["architectures"].index(a) for a in kept] == [0, 2] and scores.shape == (2, 3)
    assert seed_table({"architectures": [{"runs": [{"seed": 0, "dose_score": 1.0}]}]})[2].shape == (1, 0)


def test_the_tau_ceiling_predicts_what_one_more_seed_reaches_under_its_own_model() -> None:
    # Tables drawn from the blocked model with known variances (those of the full-recipe truth): the ceiling
    # computed from each table, on average, is what a third seed really reaches against the two-seed mean.
    # (Shrinking the true scores by the mean's noise share, as before, fell 0.04 short.)
    rng = np.random.default_rng(1)
    predicted, reached = [], []
    for _ in range(300):
        true = rng.normal(0.0, np.sqrt(0.035), 10)
        runs = true[:, None] + rng.normal(0.0, 0.1, 3)[None, :] + rng.normal(0.0, np.sqrt(0.012), (10, 3))
        ceiling = tau_ceiling(runs[:, :2], draws=40, seed=int(rng.integers(1 << 30)))
        predicted.append(ceiling["one_more_seed"][0] if ceiling else 0.0)
        reached.append(kendalltau(runs[:, 2], runs[:, :2].mean(axis=1)).statistic)
    assert abs(np.mean(predicted) - np.mean(reached)) < 0.02


def test_the_tau_ceiling_is_near_one_for_separated_architectures_and_absent_without_any() -> None:
    rng = np.random.default_rng(0)
    separated = np.arange(10.0)[:, None] + rng.normal(0.0, 0.05, (10, 2))
    ceiling = tau_ceiling(separated, draws=200)
    assert ceiling["oracle"][0] > 0.95 and ceiling["one_more_seed"][3] == 1.0  # every draw reaches 0.5
    noise = rng.normal(0.0, 1.0, 10)
    assert tau_ceiling(np.stack([noise, -noise], axis=1), draws=200) == {}  # every mean the same: no order at all
    overlapping = tau_ceiling(np.arange(10.0)[:, None] * 0.1 + rng.normal(0.0, 0.3, (10, 2)), draws=200)
    assert overlapping and 0 < overlapping["oracle"][0] < 0.9


def test_a_find_two_searches_share_counts_once_and_the_variant_effect_is_tested_on_find_means() -> None:
    from benchmarks.nas_comparison import distinct_runs, variant_effect

    def search(n: int, scores: tuple[float, float]) -> dict:
        return {"best": {"genotype": {"n": n}, "standalone": [{"seed": s, "dose_score": d} for s, d in enumerate(scores)]}}

    same = [search(1, (4.0, 5.0)), search(1, (4.0, 5.0))]  # both search seeds found architecture 1
    assert [run["dose_score"] for run in distinct_runs(same)] == [4.0, 5.0]
    results = {"a": [search(1, (4.0, 4.2)), search(2, (4.4, 4.6))], "b": [search(3, (4.2, 4.4)), search(4, (4.6, 4.8))],
               "c": same, "d": [search(5, (4.0, 4.2)), {"best": {"genotype": {"n": 6}, "standalone": []}}]}
    statistic, p_value = variant_effect(results, [0, 1])  # a and b only: c has one find, d is not complete
    assert statistic == pytest.approx(0.5) and 0.5 < p_value < 0.6  # means 4.1, 4.5 | 4.3, 4.7: F(1, 2) = 0.04 / 0.08
    assert variant_effect({"a": results["a"], "d": results["d"]}, [0, 1]) is None


def test_the_comparison_searches_in_the_networks_asked_for_once_per_search_seed(tiny_packs, tmp_path, monkeypatch,
                                                                              capsys) -> None:
    import json
    import sys

    from benchmarks import nas_comparison
    from benchmarks.nas_standalone import Recipe
    from dosepred.nas.space import SearchSpace

    recipe_arguments = ["--steps", "2", "--resolution", "32", "--widths", "4", "8", "16", "32", "--stem-stride", "2",
                        "--train", str(tiny_packs / "train"), "--validation", str(tiny_packs / "validation")]
    space = SearchSpace((4, 8, 16, 32))
    genotypes = [space.sample(np.random.default_rng(seed)) for seed in range(3)]
    networks = {"channels": [4, 8, 16, 32], "stem_stride": 2, "resolution": 32, "beam_angles": [0, 120, 240]}
    truth = tmp_path / "truth.json"
    truth.write_text(json.dumps({"recipe": Recipe.from_args(recipe_args(*recipe_arguments)).describe(), "networks": networks,
                                 "architectures": [{"genotype": g, "runs": [{"seed": s, "dose_score": float(n + s)}
                                                                             for s in (0, 1)]}
                                                   for n, g in enumerate(genotypes)]}))
    config = tmp_path / "search.yaml"
    config.write_text("device: cpu\ndata: {resolution: 16}\nsearch: {channels: [2, 4, 8, 16], supernet_steps: 2, "
                      "max_sweeps: 1, validation_patients: 1}\n")

    def compare(out: str, *extra: str) -> None:
        monkeypatch.setattr(sys, "argv", ["nas_comparison", str(tmp_path / out), "--config", str(config),
                                          "--standalone", str(truth), "--variants", "random:architectures=2", "--threads", "1",
                                          *recipe_arguments, *extra])
        nas_comparison.main()

    monkeypatch.chdir(tmp_path)  # the stand-alone runs' checkpoints go to runs/nas_comparison/<out>/
    compare("truth", "--supernet-networks", "truth", "--search-only")
    searched = json.loads((tmp_path / "truth" / "search" / "random_architectures=2_seed0.json").read_text())
    assert searched["networks"] == networks and len(searched["sample_estimates"]) == 3
    assert searched["best"]["parameters"] > 0
    printed = capsys.readouterr()
    assert "random:architectures=2, seed 0: " in printed.err  # the search's progress lines
    row = next(line for line in printed.out.splitlines() if line.startswith("random:architectures=2 "))
    assert row.split()[-4:-2] == ["-", "-"]  # the searches' columns alone: no stand-alone run of the best yet
    comparison = json.loads((tmp_path / "truth" / "comparison.json").read_text())
    assert not comparison["standalone_complete"]
    assert set(comparison["results"]["random:architectures=2"][0]["kendall_tau_b"]) == {"mean", "interval", "per_seed"}
    assert "consensus of all 1 searches" in printed.out and "consensus_kendall_tau_b" in comparison
    assert not (tmp_path / "runs").exists()
    compare("config", "--search-seeds", "0", "1")  # the config's own networks: its widths on its grid, no beams
    printed = capsys.readouterr().out
    row = next(line for line in printed.splitlines() if line.startswith("random:architectures=2 "))
    precision = "bf16" if cpu_has_bf16() else "fp32"
    assert re.search(rf"stand-alone runs of the finds: [24] {precision} on CPU ", printed)  # 1-2 finds, 2 seeds
    assert row.count(" ± ") == 3  # search time, tau-b and the best found's dose: mean ± SD over the searches
    comparison = json.loads((tmp_path / "config" / "comparison.json").read_text())
    assert comparison["standalone_complete"] and (tmp_path / "runs" / "nas_comparison" / "config").is_dir()
    searches = comparison["results"]["random:architectures=2"]
    assert [r["search_seed"] for r in searches] == [0, 1] and comparison["search_seeds"] == [0, 1]
    assert searches[0]["networks"] == {"channels": [2, 4, 8, 16], "stem_stride": 1, "resolution": 16, "beam_angles": None}
    assert searches[0]["sample_estimates"] != searches[1]["sample_estimates"]  # another seed, another supernet
    for search in searches:  # the best found trained with the recipe's two seeds
        assert sorted(run["seed"] for run in search["best"]["standalone"]) == [0, 1]
        assert len(search["kendall_tau_b"]["per_seed"]) == 2  # nan where a 2-step supernet estimates all alike
        assert {run["device"] for run in search["best"]["standalone"]} == {"cpu"}
    # shards (the GPU command runs several side by side): each trains its share, the last one completes the table
    shutil.copytree(tmp_path / "config" / "search", tmp_path / "sharded" / "search")
    compare("sharded", "--search-seeds", "0", "1", "--shard", "0/2")
    printed = capsys.readouterr()
    assert "left to other shards" in printed.err
    row = next(line for line in printed.out.splitlines() if line.startswith("random:architectures=2 "))
    assert re.search(r"/[24] runs", row) and " ± " not in row.split(" runs")[1]  # the runs so far, no score yet
    assert not json.loads((tmp_path / "sharded" / "comparison.json").read_text())["standalone_complete"]
    compare("sharded", "--search-seeds", "0", "1", "--shard", "1/2")
    assert json.loads((tmp_path / "sharded" / "comparison.json").read_text())["standalone_complete"]
    with pytest.raises(SystemExit):  # a folder of searches in other networks is not mixed into this one
        compare("config", "--supernet-networks", "truth")
    config.write_text(config.read_text().replace("supernet_steps: 2", "supernet_steps: 3"))
    with pytest.raises(SystemExit):  # nor one of another budget: its cached searches would pass for this one's
        compare("config", "--search-seeds", "0", "1")
    assert "holds results of other settings (search differ" in capsys.readouterr().err
    config.write_text(config.read_text().replace("[2, 4, 8, 16]", "[2, 4]"))
    with pytest.raises(SystemExit):  # a best found of another depth could not be trained with the recipe's widths
        compare("shallow")
    assert "different depths" in capsys.readouterr().err


def test_the_full_scale_search_searches_the_full_recipe_ground_truths_networks() -> None:
    import json
    from pathlib import Path

    from benchmarks.nas_comparison import searched_networks
    from dosepred.engine.config import SEARCH_DEFAULTS, load_config

    root = Path(__file__).resolve().parents[2]
    config = load_config(root / "configs" / "search_full_cpu.yaml", defaults=SEARCH_DEFAULTS)
    truth = json.loads((root / "benchmarks" / "results" / "nas_standalone_ranked_full500.json").read_text())
    assert searched_networks(config) == truth["networks"]
    assert not config["data"]["augment"] and config["seed"] == 0


def test_estimates_that_cannot_rank_have_no_interval() -> None:
    from benchmarks.nas_ranking import bootstrap_interval

    assert all(math.isnan(bound) for bound in bootstrap_interval([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0]))
    low, high = bootstrap_interval([1.0, 2.0, 3.0, 4.0, 5.0], [1.0, 2.0, 3.0, 5.0, 4.0])
    assert -1 <= low <= high <= 1


def test_one_supernet_per_seed_each_an_estimator_and_their_mean_one_too(tiny_packs, tmp_path, monkeypatch) -> None:
    import json
    import sys

    from benchmarks import nas_ranking
    from dosepred.nas.space import SearchSpace

    space = SearchSpace((4, 8, 16, 32))
    networks = {"channels": [4, 8, 16, 32], "stem_stride": 2, "resolution": 32, "beam_angles": [0, 120, 240]}
    truth = tmp_path / "truth.json"
    truth.write_text(json.dumps({"recipe": "tiny", "networks": networks, "architectures": [
        {"genotype": space.sample(np.random.default_rng(n)), "runs": [{"seed": s, "dose_score": float(n + s)}
                                                                     for s in (0, 1)]} for n in range(3)]}))
    monkeypatch.chdir(tmp_path)  # the supernets' runs go to runs/nas_ranking/
    monkeypatch.setattr(sys, "argv", [
        "nas_ranking", "--standalone", str(truth), "--train", str(tiny_packs / "train"),
        "--validation", str(tiny_packs / "validation"), "--supernet-passes", "2", "--supernet-networks", "truth",
        "--supernet-seeds", "0", "1", "--proxy-seeds", "0", "--validation-patients", "1", "--threads", "1",
        "--json", str(tmp_path / "ranking.json")])
    nas_ranking.main()
    assert sorted(path.name for path in (tmp_path / "runs" / "nas_ranking").iterdir()) == [
        "lenas@truth_2", "lenas@truth_2_seed1"]
    pairs = json.loads((tmp_path / "ranking.json").read_text())["pairs"]
    estimates = {name: [pair["estimates"][name] for pair in pairs] for name in pairs[0]["estimates"]}
    assert set(estimates) == {"lenas@truth", "lenas@truth full grid", "lenas@truth seed 1",
                              "lenas@truth seed 1 full grid", "lenas@truth, mean of 2 supernets",
                              "lenas@truth full grid, mean of 2 supernets"}
    assert estimates["lenas@truth"] != estimates["lenas@truth seed 1"]  # another seed, another supernet
    assert estimates["lenas@truth, mean of 2 supernets"] == pytest.approx(
        (np.array(estimates["lenas@truth"]) + estimates["lenas@truth seed 1"]) / 2)


def test_a_stand_alone_network_can_start_from_its_paths_supernet_weights(tiny_packs, tmp_path, monkeypatch) -> None:
    import torch

    from benchmarks import nas_standalone
    from benchmarks.nas_standalone import INHERITED, Recipe, inherit_weights
    from dosepred.nas.space import SearchSpace
    from dosepred.nas.supernet import make_supernet
    from dosepred.networks.searched import build_network

    space = SearchSpace((4, 8, 16, 32), stem_stride=2)  # the inputs without beams, as the recipe below
    supernet = make_supernet(space)
    checkpoint = tmp_path / "last.pt"
    torch.save({"model": supernet.state_dict(), "step": 3}, checkpoint)  # as the training loop writes it
    genotype = space.sample(np.random.default_rng(4))
    network = build_network(genotype=genotype, channels=(4, 8, 16, 32), stem_stride=2)
    inherit_weights(network, checkpoint)
    weights = supernet.state_dict()
    assert all(torch.equal(value, weights[name]) for name, value in network.state_dict().items())
    image = torch.randn(1, space.in_channels, 32, 32, 32)
    with torch.no_grad():  # the very function of the supernet's path
        assert torch.allclose(network(image), supernet(image, genotype), atol=1e-6)
    wider = build_network(genotype=genotype, channels=(8, 16, 32, 64), stem_stride=2)
    with pytest.raises(ValueError, match="other widths"):
        inherit_weights(wider, checkpoint)

    arguments = ["--steps", "1", "--resolution", "32", "--widths", "4", "8", "16", "32", "--stem-stride", "2",
                 "--threads", "1", "--train", str(tiny_packs / "train"), "--validation", str(tiny_packs / "validation")]
    plain = Recipe.from_args(recipe_args(*arguments))
    inherited = Recipe.from_args(recipe_args(*arguments, "--inherit", str(checkpoint)))
    assert INHERITED not in plain.describe() and f"{INHERITED} {checkpoint} (sha256 " in inherited.describe()
    loaded = []
    monkeypatch.setattr(nas_standalone, "inherit_weights", lambda network, path: loaded.append(path))
    plain.run(genotype, 0, tmp_path / "plain")
    assert not loaded  # a plain recipe starts from scratch
    assert inherited.run(genotype, 0, tmp_path / "run")["dose_score"] > 0
    assert loaded == [checkpoint]  # the inherited recipe starts from the supernet's weights
