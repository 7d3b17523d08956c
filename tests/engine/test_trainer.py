from __future__ import annotations

import csv
import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from typer.testing import CliRunner

from dosepred.cli import app
from dosepred.engine.config import ConfigError, load_config
from dosepred.engine.trainer import Trainer
from tests.conftest import SAMPLE, TINY_NETWORK, requires_openkbp, tiny_config

runner = CliRunner()


def test_run_folder_has_config_metrics_plot_and_best_model(tiny_packs, tmp_path: Path) -> None:
    trainer = Trainer(tiny_config(tiny_packs), tmp_path / "run")
    history = trainer.fit()
    assert [row["step"] for row in history] == [2, 4]
    assert all(row["val_dose_score"] > 0 for row in history)
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"config.yaml", "metrics.csv", "curves.png", "best", "checkpoints"} <= files
    with open(tmp_path / "run" / "metrics.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 2
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()
    assert load_config(tmp_path / "run" / "config.yaml") == trainer.config


class Interrupt(Exception):
    pass


def test_resume_equals_an_uninterrupted_run(tiny_packs, tmp_path: Path) -> None:
    # a checkpoint between validations: the resumed run's logged training loss must still average all six steps
    config = tiny_config(tiny_packs, "optim.steps=6", "checkpoint_every=3", "validate_every=6")
    straight = Trainer(config, tmp_path / "straight")
    straight.fit()

    def stop_after_checkpoint(step: int, row: dict) -> None:
        if step == 3:
            raise Interrupt

    interrupted = Trainer(config, tmp_path / "resumed")
    with pytest.raises(Interrupt):
        interrupted.fit(stop_after_checkpoint)
    resumed = Trainer(config, tmp_path / "resumed", resume=True)
    assert resumed.step == 3
    assert resumed.trained_seconds == interrupted.trained_seconds > 0  # the time budget counts the first part
    resumed.fit()
    assert resumed.step == straight.step == 6
    for (name, a), (_, b) in zip(straight.network.state_dict().items(), resumed.network.state_dict().items()):
        assert torch.equal(a, b), name
    assert [r["val_dose_score"] for r in resumed.history] == [r["val_dose_score"] for r in straight.history]
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in straight.history]


def test_a_run_its_time_budget_stopped_stays_stopped_when_resumed(tiny_packs, tmp_path: Path) -> None:
    config = tiny_config(tiny_packs, "optim.steps=50", "optim.max_minutes=0.000001")
    stopped = Trainer(config, tmp_path / "run")
    stopped.fit()
    assert stopped.step == 1
    resumed = Trainer(config, tmp_path / "run", resume=True)
    assert resumed.fit() == stopped.history and resumed.step == 1  # no step, validation or export more


def test_config_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown key 'optim.stepz'; did you mean 'optim.steps'"):
        load_config(None, ["optim.stepz=3"])
    (tmp_path / "bad.yaml").write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="optim.steps must be of type int, not 1.5"):
        load_config(None, ["optim.steps=1.5"])
    with pytest.raises(ConfigError, match="data.augment must be of type bool"):
        load_config(None, ["data.augment=1"])
    assert load_config(None, ["optim.lr=1"])["optim"]["lr"] == 1  # an int stands for a float
    assert load_config(None, ["data.beam_angles=[0, 180]"])["data"]["beam_angles"] == [0, 180]  # default null


def test_numbers_as_yaml_reads_them_and_meaningless_values_are_refused(tmp_path: Path) -> None:
    config = load_config(None, ["optim.lr=1e-3", "optim.steps=1e3", "optim.grad_clip=null", "optim.max_minutes=2"])
    assert (config["optim"]["lr"], config["optim"]["steps"], config["optim"]["grad_clip"]) == (0.001, 1000, None)
    (tmp_path / "c.yaml").write_text("optim: {lr: 5e-4}\n")  # YAML 1.1 reads 5e-4 as text: still a number here
    assert load_config(tmp_path / "c.yaml")["optim"]["lr"] == 0.0005
    for override, message in [
        ("optim.steps=null", "optim.steps cannot be null"), ("seed=null", "seed cannot be null"),
        ("optim.steps=2.5e0", "must be of type int"), ("optim.lr=fast", "must be of type float"),
        ("optim.grad_clip=-1", "must be a positive number"), ("data.beam_rotation=2.0", "a probability"),
        ("data.max_validation_patients=abc", "must be of type int"), ("data.beam_angles=north", "of type list"),
        ("optim.max_minutes=abc", "of type number"), ("threads=-1", "at least 1"), ("data.resolution=0", "grid edge"),
        ("data.resolution=8", "from 16 to 256"),  # a run at 8 would export a model predict refuses
        ("detector.x=1", "unknown key 'detector'"), ("data.train=[", "not valid YAML"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(None, [override])


def test_overwrite_replaces_a_run_and_a_run_stopped_before_its_checkpoint_resumes_afresh(tiny_packs,
                                                                                      tmp_path: Path) -> None:
    Trainer(tiny_config(tiny_packs), tmp_path / "run").fit()
    replaced = Trainer(tiny_config(tiny_packs, "optim.steps=6", "checkpoint_every=6", "validate_every=6"),
                       tmp_path / "run", overwrite=True)
    assert not any((tmp_path / "run" / name).exists() for name in ("best", "checkpoints", "metrics.csv", "curves.png"))
    assert replaced.step == 0  # stopped here, before its first checkpoint ...
    resumed = Trainer(load_config(tmp_path / "run" / "config.yaml"), tmp_path / "run", resume=True)
    assert resumed.step == 0 and not resumed.resuming  # ... --resume starts it afresh with its own config
    assert resumed.config["optim"]["steps"] == 6


def test_a_network_that_cannot_take_the_grid_or_the_init_weights_is_a_message(tiny_packs, tiny_model,
                                                                              tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="data.resolution 32 is no multiple of 3"):
        Trainer(tiny_config(tiny_packs, "network.strides=[3]"), tmp_path / "strides")
    with pytest.raises(ValueError, match="tensors missing, extra or of another shape, e.g. "):
        Trainer(tiny_config(tiny_packs, f"init={tiny_model}", "network.channels=[4,16]"), tmp_path / "init")


@pytest.mark.parametrize("config, defaults", [
    ("baseline_cpu.yaml", "DEFAULTS"), ("full_cpu.yaml", "DEFAULTS"), ("gpu_full.yaml", "DEFAULTS"),
    ("distill_cpu32.yaml", "DISTILL_DEFAULTS"), ("distill_cpu128.yaml", "DISTILL_DEFAULTS"),
    ("distill_gpu128.yaml", "DISTILL_DEFAULTS"),
    ("search_lenas_cpu.yaml", "SEARCH_DEFAULTS"), ("search_compare_cpu.yaml", "SEARCH_DEFAULTS"),
    ("search_full_cpu.yaml", "SEARCH_DEFAULTS"),
    ("detect_blc.yaml", "DETECT_DEFAULTS"), ("fewshot_ct.yaml", "FEWSHOT_DEFAULTS"),
])
def test_every_shipped_config_loads(config: str, defaults: str) -> None:
    from dosepred.engine import config as configs

    assert load_config(Path(__file__).resolve().parents[2] / "configs" / config, defaults=getattr(configs, defaults))


def _ddp_worker(rank: int, world_size: int, port: int, config: dict, run_dir: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    trainer = Trainer(config, run_dir)
    trainer.fit()
    flat = torch.cat([p.detach().flatten() for p in trainer.network.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(world_size)]
    torch.distributed.all_gather(gathered, flat)
    if rank == 0:
        same = all(torch.equal(gathered[0], g) for g in gathered[1:])
        Path(out).write_text(json.dumps({"identical": same, "changed": bool(trainer.step == 4)}))
    trainer.close()  # both ranks leave the group together, the DDP wrapper released first


@pytest.mark.dist
def test_ddp_replicas_stay_identical(tiny_packs, tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = tiny_config(tiny_packs, "optim.batch_size=1")
    mp.spawn(_ddp_worker, args=(2, port, config, str(tmp_path / "run"), str(tmp_path / "out.json")), nprocs=2)
    result = json.loads((tmp_path / "out.json").read_text())
    assert result == {"identical": True, "changed": True}
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()


def test_train_predict_evaluate_on_the_phantom(tiny_packs, tmp_path: Path) -> None:
    overrides = [f"data.train={tiny_packs / 'train'}", f"data.validation={tiny_packs / 'validation'}",
                 "data.resolution=32", "optim.steps=2", "validate_every=2", *TINY_NETWORK]
    result = runner.invoke(app, ["train", "-o", str(tmp_path / "run"), *overrides])
    assert result.exit_code == 0, result.output
    assert runner.invoke(app, ["phantom", "-o", str(tmp_path / "patients")]).exit_code == 0  # the 128^3 grid
    result = runner.invoke(app, ["predict", "-i", str(tmp_path / "patients"), "-o", str(tmp_path / "pred"),
                                 "-m", str(tmp_path / "run" / "best"), "--format", "nifti"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["evaluate", str(tmp_path / "patients"), str(tmp_path / "pred")])
    assert result.exit_code == 0, result.output
    assert "dose score" in result.output


@requires_openkbp
def test_train_predict_evaluate_on_real_samples(tmp_path: Path) -> None:
    overrides = [f"data.train={SAMPLE / 'train-pats'}", f"data.validation={SAMPLE / 'validation-pats'}",
                 "data.resolution=32", "optim.steps=2", "validate_every=2", *TINY_NETWORK]
    assert runner.invoke(app, ["train", "-o", str(tmp_path / "run"), *overrides]).exit_code == 0
    result = runner.invoke(app, ["predict", "-i", str(SAMPLE / "validation-pats"), "-o", str(tmp_path / "pred"),
                                 "-m", str(tmp_path / "run" / "best"), "--no-tta"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "pred" / "pt_201.csv").is_file()
    result = runner.invoke(app, ["evaluate", str(SAMPLE / "validation-pats"), str(tmp_path / "pred"), "--json",
                                 str(tmp_path / "scores.json")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "scores.json").read_text())["n"] == 1
