"""Issue 14: losses, warm starts with lineage, float16 export, the GPU config rehearsed on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from dosepred.cli import app
from dosepred.engine.config import DISTILL_DEFAULTS, load_config
from dosepred.engine.losses import masked_l1, sorted_dose_l1
from dosepred.engine.trainer import Trainer
from dosepred.inference.loader import load_predictor
from dosepred.models import ModelError
from tests.conftest import tiny_config

REPOSITORY = Path(__file__).resolve().parents[2]
runner = CliRunner()


def test_sorted_dose_loss_compares_dose_volume_histograms() -> None:
    structures = torch.zeros(1, 2, 1, 1, 4)
    structures[0, 0, 0, 0, :] = 1  # ROI 0: all four voxels; ROI 1: not contoured
    target = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 1, 1, 4)
    shuffled = torch.tensor([4.0, 3.0, 2.0, 1.0]).view(1, 1, 1, 1, 4)
    assert float(sorted_dose_l1(shuffled, target, structures)) == 0.0  # same histogram, voxels swapped
    shifted = target + 0.5
    assert float(sorted_dose_l1(shifted, target, structures)) == pytest.approx(0.5)
    assert float(sorted_dose_l1(shifted, target, torch.zeros_like(structures))) == 0.0


def test_the_losses_of_a_batch_are_the_mean_of_its_samples_losses() -> None:
    # torchrun averages the processes' gradients: a batch split over processes must give the loss of the whole
    # batch, whatever the patients' sizes and ROI counts.
    generator = torch.Generator().manual_seed(0)
    prediction, target = torch.rand(2, 1, 4, 4, 4, generator=generator), torch.rand(2, 1, 4, 4, 4, generator=generator)
    mask = torch.zeros(2, 1, 4, 4, 4)
    mask[0, :, :3], mask[1, :, :1] = 1, 1  # 48 and 16 voxels
    structures = torch.zeros(2, 3, 4, 4, 4)
    structures[0, :, :2], structures[1, 0, 1:] = 1, 1  # three ROIs and one
    for loss, weights in ((masked_l1, mask), (sorted_dose_l1, structures)):
        whole = loss(prediction, target, weights)
        halves = [loss(prediction[i : i + 1], target[i : i + 1], weights[i : i + 1]) for i in range(2)]
        torch.testing.assert_close(whole, (halves[0] + halves[1]) / 2)


def test_warm_start_keeps_weights_and_records_the_lineage(tiny_packs, tmp_path: Path) -> None:
    first = Trainer(tiny_config(tiny_packs), tmp_path / "first")
    first.fit()
    model = tmp_path / "first" / "best"
    second = Trainer(tiny_config(tiny_packs, f"init={model}", "optim.steps=2"), tmp_path / "second")
    saved = load_file(model / "model.safetensors")
    for name, tensor in second.network.state_dict().items():
        torch.testing.assert_close(tensor, saved[name].float(), msg=name)
    assert second.scheduler.last_epoch == 0  # a fresh schedule
    second.fit()
    lineage = json.loads((tmp_path / "second" / "best" / "config.json").read_text())["lineage"]
    assert [stage["init"] for stage in lineage] == [None, str(model)]
    assert all(stage["steps"] > 0 and "hardware" in stage and "wall_s" in stage for stage in lineage)
    model.rename(tmp_path / "moved")  # a resumed run keeps its lineage from its checkpoint, wherever its init went
    resumed = Trainer(load_config(tmp_path / "second" / "config.yaml"), tmp_path / "second", resume=True)
    assert resumed.lineage == lineage[:1]


def test_exported_weights_are_float16_and_predict_like_the_network(tiny_packs, phantom_small, tmp_path: Path) -> None:
    trainer = Trainer(tiny_config(tiny_packs, "amp=false"), tmp_path / "run")
    trainer.fit()
    weights = load_file(tmp_path / "run" / "best" / "model.safetensors")
    assert {tensor.dtype for tensor in weights.values() if tensor.is_floating_point()} == {torch.float16}
    exported = load_predictor(tmp_path / "run" / "best", device=torch.device("cpu"))
    assert exported.predict(phantom_small, tta=False).shape == phantom_small.shape


def test_an_existing_run_is_not_overwritten(tiny_packs, tmp_path: Path) -> None:
    Trainer(tiny_config(tiny_packs, "optim.steps=1"), tmp_path / "run").fit()
    with pytest.raises(FileExistsError, match="--resume continues it, --overwrite replaces it"):
        Trainer(tiny_config(tiny_packs), tmp_path / "run")
    Trainer(tiny_config(tiny_packs), tmp_path / "run", overwrite=True)


def test_corrupt_checkpoint_gives_a_message(tiny_packs, tmp_path: Path) -> None:
    Trainer(tiny_config(tiny_packs, "optim.steps=2"), tmp_path / "run").fit()
    (tmp_path / "run" / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    result = runner.invoke(app, ["train", "-o", str(tmp_path / "run"), "--resume"])
    assert result.exit_code == 2 and "corrupt or incompatible checkpoint" in result.output
    assert "Traceback" not in result.output


def test_time_budget_stops_with_a_validated_model(tiny_packs, tmp_path: Path) -> None:
    trainer = Trainer(tiny_config(tiny_packs, "optim.steps=50", "optim.max_minutes=0"), tmp_path / "run")
    history = trainer.fit()
    assert trainer.step == 1 and [row["step"] for row in history] == [1]
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()


def test_weights_holding_nan_are_refused(tiny_model, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    folder = tmp_path / "nan-model"
    folder.mkdir()
    weights = load_file(tiny_model / "model.safetensors")
    first = next(iter(weights))
    weights[first] = torch.full_like(weights[first], float("nan"))
    save_file(weights, folder / "model.safetensors")
    (folder / "config.json").write_text((tiny_model / "config.json").read_text())
    with pytest.raises(ModelError, match="NaN"):
        load_predictor(folder, device=torch.device("cpu"))


def test_the_gpu_config_runs_on_the_cpu(tiny_packs, tmp_path: Path) -> None:
    """The rehearsal of configs/gpu_full.yaml: the very same config and network, tiny data, two steps."""
    config = load_config(REPOSITORY / "configs" / "gpu_full.yaml", [
        f"data.train={tiny_packs / 'train'}", f"data.validation={tiny_packs / 'validation'}", "data.resolution=32",
        "data.workers=2", "device=cpu", "optim.steps=2", "validate_every=2", "checkpoint_every=2"])
    Trainer(config, tmp_path / "run").fit()
    best = tmp_path / "run" / "best"
    files = list(best.iterdir())
    assert {path.name for path in files} == {"model.safetensors", "config.json"}
    assert all(path.stat().st_size <= 16 * 2**20 for path in files)  # each comes back through the device's $OUT
    assert json.loads((best / "config.json").read_text())["data"]["beam_angles"] == config["data"]["beam_angles"]


TEACHERS = REPOSITORY / "dosepred" / "models" / "lenas-teachers"


@pytest.mark.parametrize("member", json.loads((TEACHERS / "config.json").read_text())["members"])
def test_the_gpu_config_trains_each_committed_teacher(member: str, tiny_packs, tmp_path: Path) -> None:
    """The rehearsal of the GPU teachers' command (README): configs/gpu_full.yaml with a shipped teacher's
    genotype and widths (MEMBER.json beside its folder), warm-started from it, tiny data, one step; the model
    folder comes back through $OUT."""
    teacher = TEACHERS / f"{member}.json"
    result = runner.invoke(app, ["train", "-c", str(REPOSITORY / "configs" / "gpu_full.yaml"), "--genotype", str(teacher),
                                 "--init", str(TEACHERS / member),
                                 "-o", str(tmp_path / "run"), f"data.train={tiny_packs / 'train'}",
                                 f"data.validation={tiny_packs / 'validation'}", "data.resolution=32",
                                 "data.workers=2", "device=cpu", "optim.steps=1"])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "run" / "best" / "config.json").read_text())
    assert config["network"]["genotype"] == json.loads(teacher.read_text())["genotype"]
    assert config["network"]["channels"] == [16, 32, 64, 128] and len(config["data"]["beam_angles"]) == 9
    assert config["network"]["stem_stride"] == 2  # the blocks at the 64^3 scale they were searched at
    assert len(config["lineage"]) == 2  # the shipped teacher's CPU stage, then this warm-started one
    assert load_config(tmp_path / "run" / "config.yaml")["loss"]["dvh_weight"] > 0  # the DVH-aware loss


def test_the_gpu_student_command_distils_the_teachers_of_the_gpu_command(tiny_packs, tmp_path: Path) -> None:
    """The rehearsal of the README's GPU LE-NAS commands: two committed teachers with configs/gpu_full.yaml, then the
    committed student, warm-started from the shipped one, with configs/distill_gpu128.yaml, as on the device (tiny
    data, one step each, on the CPU)."""
    folder = REPOSITORY / "benchmarks" / "results" / "lenas_search_1000passes_teachers"
    tiny = [f"data.train={tiny_packs / 'train'}", f"data.validation={tiny_packs / 'validation'}", "data.resolution=32",
            "data.workers=2", "device=cpu", "optim.steps=1"]
    for number in (1, 2):
        result = runner.invoke(app, ["train", "-c", str(REPOSITORY / "configs" / "gpu_full.yaml"), "--genotype",
                                     str(folder / f"teacher_{number}.json"), "-o", str(tmp_path / f"teacher{number}"), *tiny])
        assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["distill", "-c", str(REPOSITORY / "configs" / "distill_gpu128.yaml"), "-o",
                                 str(tmp_path / "student"), "--teachers", str(tmp_path / "teacher1" / "best"),
                                 "--teachers", str(tmp_path / "teacher2" / "best"), "--student",
                                 str(folder / "student.json"), "--init", "lenas-student", *tiny])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "student" / "best" / "config.json").read_text())
    assert config["network"]["channels"] == [8, 16, 32, 64] and config["network"]["stem_stride"] == 2
    assert config["network"]["out_channels"] == 2 and len(config["data"]["beam_angles"]) == 9  # dose + uncertainty
    shipped_network = json.loads((REPOSITORY / "dosepred" / "models" / "lenas-student" / "config.json").read_text())["network"]
    assert config["network"]["detached_uncertainty"] is shipped_network["detached_uncertainty"] is True  # continued as trained
    assert load_config(tmp_path / "student" / "config.yaml", defaults=DISTILL_DEFAULTS)["loss"]["dvh_weight"] > 0
    shipped = json.loads((REPOSITORY / "dosepred" / "models" / "lenas-student" / "config.json").read_text())["lineage"]
    assert len(shipped) >= 3 and [stage["run"] for stage in config["lineage"]] == [s["run"] for s in shipped] + ["student"]


def test_the_gpu_run_needs_neither_nibabel_nor_simpleitk(tiny_packs, tmp_path: Path) -> None:
    """What travels to the GPU carries no nibabel wheel and the GPU image has neither: training from packs
    must not import them (they are imported where NIfTI or other images are read)."""
    import subprocess
    import sys

    script = f"""
import sys
sys.modules["nibabel"] = sys.modules["SimpleITK"] = None  # importing either now fails
from dosepred.cli import app
app(["train", "-c", {str(REPOSITORY / "configs" / "gpu_full.yaml")!r}, "-o", {str(tmp_path / "run")!r},
     "data.train={tiny_packs / 'train'}", "data.validation={tiny_packs / 'validation'}", "data.resolution=32",
     "device=cpu", "optim.steps=1", "network.channels=[4, 8]", "network.strides=[2]"])
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()


def test_a_step_with_garbage_gradients_is_skipped(tiny_packs, tmp_path: Path) -> None:
    trainer = Trainer(tiny_config(tiny_packs, "amp=false"), tmp_path / "run")
    before = {name: tensor.clone() for name, tensor in trainer.network.state_dict().items()}
    parameter = next(trainer.network.parameters())
    trainer.optimize((parameter * 1e30).sum())  # a gradient norm far above optim.skip_grad_norm
    assert all(torch.equal(before[name], tensor) for name, tensor in trainer.network.state_dict().items())
    assert trainer.scheduler.last_epoch == 1  # the schedule moved on
    trainer.optimize(trainer.loss(trainer.network(trainer.make_batch(0)["image"]), trainer.make_batch(0)))
    assert any(not torch.equal(before[name], tensor) for name, tensor in trainer.network.state_dict().items())
