from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dosepred.io.phantom import make_phantom
from dosepred.cli import app
from dosepred.engine import distillation
from dosepred.engine.distillation import DistillationTrainer
from dosepred.engine.trainer import Trainer
from dosepred.inference.loader import load_predictor
from dosepred.inference.predictor import Predictor
from dosepred.models import ModelError
from tests.conftest import TINY_NETWORK, tiny_config

runner = CliRunner()


@pytest.fixture(scope="module")
def teachers(tiny_packs, tiny_model, tmp_path_factory) -> list[Path]:
    """Two different tiny teachers (another seed for the second)."""
    run = tmp_path_factory.mktemp("teacher2")
    Trainer(tiny_config(tiny_packs, "seed=1"), run).fit()
    return [tiny_model, run / "best"]


def ensemble_of(teachers: list[Path], folder: Path) -> None:
    """An ensemble model folder holding copies of the teachers beside its config."""
    for number, teacher in enumerate(teachers):
        shutil.copytree(teacher, folder / f"member_{number}")
    (folder / "config.json").write_text(json.dumps({"kind": "ensemble", "members": ["member_0", "member_1"]}))


def test_ensemble_members_are_plain_names_beside_it_or_shipped(teachers: list[Path], tmp_path: Path,
                                                               monkeypatch) -> None:
    ensemble_of(teachers, tmp_path / "ensemble")
    monkeypatch.chdir(tmp_path / "ensemble")  # where it is run from changes nothing
    assert len(load_predictor(tmp_path / "ensemble", device=torch.device("cpu")).members) == 2
    for members, message in [([str(teachers[0]), "member_1"], "must be a plain name"),
                             (["../ensemble/member_0", "member_1"], "must be a plain name"),
                             (["member_0", "elsewhere"], "no member 'elsewhere'"),
                             (["member_0", "member_0"], "each listed once"),  # each member is a network in memory
                             (["member_0", "member_1"] * 9, "2 to 16 members"), (["member_0"], "2 to 16 members")]:
        (tmp_path / "ensemble" / "config.json").write_text(json.dumps({"kind": "ensemble", "members": members}))
        with pytest.raises(ModelError, match=message):
            load_predictor(tmp_path / "ensemble", device=torch.device("cpu"))
    (tmp_path / "ensemble" / "linked").symlink_to(teachers[0])  # a link beside it reaches elsewhere too
    (tmp_path / "ensemble" / "config.json").write_text(json.dumps({"kind": "ensemble", "members": ["linked", "member_1"]}))
    with pytest.raises(ModelError, match="no member 'linked'"):
        load_predictor(tmp_path / "ensemble", device=torch.device("cpu"))


def test_ensemble_mean_and_spread(teachers: list[Path], tmp_path: Path) -> None:
    ensemble_of(teachers, tmp_path)
    ensemble = load_predictor(str(tmp_path), device=torch.device("cpu"))
    patient = make_phantom((32, 32, 32))
    mean, spread = ensemble.predict_with_uncertainty(patient, tta=False)
    members = [load_predictor(str(p), device=torch.device("cpu")).predict(patient, tta=False) for p in teachers]
    np.testing.assert_allclose(mean, np.mean(members, axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(spread, np.std(members, axis=0), rtol=1e-4, atol=1e-4)
    assert spread.max() > 0


def test_ensemble_members_on_the_same_grid_share_the_inputs(teachers: list[Path], tmp_path: Path, monkeypatch) -> None:
    ensemble_of(teachers, tmp_path)
    ensemble = load_predictor(str(tmp_path), device=torch.device("cpu"))
    calls = []
    original = Predictor.inputs
    monkeypatch.setattr(Predictor, "inputs", lambda self, patient: calls.append(patient) or original(self, patient))
    ensemble.predict(make_phantom((32, 32, 32)), tta=False)
    assert len(calls) == 1


def test_soft_targets_are_the_teachers_mean_and_spread(tiny_packs, teachers, tmp_path: Path) -> None:
    config = tiny_config(tiny_packs, "optim.steps=1")
    config["distill"] = {"teachers": [str(p) for p in teachers], "critic": {"name": "patch_critic", "channels": 4,
                                                                          "num_layers_d": 2}}
    trainer = DistillationTrainer(config, tmp_path / "run")
    image = trainer.train_data.inputs(2)["image"][0]
    members = torch.stack([load_predictor(str(p), device=torch.device("cpu")).predict_volume(image)[0] for p in teachers])
    targets = trainer.train_data.attached["teacher_dose"][2]
    assert targets.dtype == torch.float16  # kept as the beam channels are: half the memory
    torch.testing.assert_close(targets[0].float(), members.mean(dim=0), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(targets[1].float(), members.std(dim=0, unbiased=False), rtol=1e-3, atol=1e-3)
    assert targets[1].max() > 0


def test_teachers_compute_in_fp32_when_the_config_says_amp_false(tiny_packs, teachers, tmp_path: Path,
                                                                  monkeypatch) -> None:
    from dosepred.engine import trainer as trainer_module
    from dosepred.inference import predictor as predictor_module

    for module in (trainer_module, predictor_module):  # a device where bf16 pays (a GPU, an AMX CPU)
        monkeypatch.setattr(module, "fast_path", lambda device: True)
    config = tiny_config(tiny_packs, "optim.steps=1", "amp=false")
    config["distill"] = {"teachers": [str(p) for p in teachers]}
    trainer = DistillationTrainer(config, tmp_path / "run")
    assert not trainer.amp and not any(teacher.amp for teacher in trainer.load_teachers())


def test_teacher_targets_are_kept_and_reused_only_for_the_same_teachers(tiny_packs, teachers, tmp_path: Path,
                                                                        monkeypatch) -> None:
    config = tiny_config(tiny_packs, "optim.steps=1")
    shared = tmp_path / "shared_targets.safetensors"
    config["distill"] = {"teachers": [str(p) for p in teachers], "teacher_targets": str(shared),
                         "critic": {"name": "patch_critic", "channels": 4, "num_layers_d": 2}}
    reported = []
    first = DistillationTrainer(config, tmp_path / "first", progress=lambda *report: reported.append(report))
    first = first.train_data.attached["teacher_dose"]
    assert shared.is_file() and not (tmp_path / "first" / "teacher_targets.safetensors").exists()
    steps = range(1, len(first) + 1)  # the patients are read, then the teachers predict each
    assert reported == [("patients", done, len(first)) for done in steps] + [("teacher targets", done, len(first))
                                                                             for done in steps]

    calls = []
    original = distillation.teacher_targets
    monkeypatch.setattr(distillation, "teacher_targets", lambda *args: calls.append(1) or original(*args))
    second = DistillationTrainer(config, tmp_path / "second").train_data.attached["teacher_dose"]
    assert calls == [] and all(torch.equal(a, b) for a, b in zip(first, second))

    config["distill"]["teachers"] = [str(teachers[0])]  # other teachers: the file no longer fits, computed afresh
    third = DistillationTrainer(config, tmp_path / "third").train_data.attached["teacher_dose"]
    assert len(calls) == len(third) and not torch.equal(first[0], third[0])
    calls.clear()
    fourth = DistillationTrainer(config, tmp_path / "fourth").train_data.attached["teacher_dose"]  # the file: replaced
    assert calls == [] and torch.equal(fourth[0], third[0])


def test_critic_is_really_trained_and_the_student_predicts_uncertainty(tiny_packs, teachers, tmp_path: Path) -> None:
    config = tiny_config(tiny_packs, "optim.steps=3", "validate_every=3", "checkpoint_every=3")
    config["distill"] = {"teachers": [str(p) for p in teachers], "adversarial_weight": 0.1,
                         "critic": {"name": "patch_critic", "channels": 4, "num_layers_d": 2}}
    trainer = DistillationTrainer(config, tmp_path / "run")
    before = [p.detach().clone() for p in trainer.critic.parameters()]
    history = trainer.fit()
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.critic.parameters()))
    assert history[-1]["critic_loss"] > 0 and history[-1]["adversarial_loss"] > 0
    with open(tmp_path / "run" / "metrics.csv") as handle:
        assert "critic_loss" in next(csv.DictReader(handle))
    student = load_predictor(str(tmp_path / "run" / "best"), device=torch.device("cpu"))
    dose, uncertainty = student.predict_with_uncertainty(make_phantom((32, 32, 32)), tta=False)
    assert uncertainty is not None and uncertainty.shape == dose.shape
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert "critic" in state and "critic_optimizer" in state


def test_the_critic_sees_the_doses_inside_the_possible_dose_mask_only(tiny_packs, teachers, tmp_path: Path) -> None:
    """Outside the mask neither student nor teachers are constrained: there the critic could tell them apart
    for free, and the student's only gradient would be the critic's."""
    config = tiny_config(tiny_packs, "optim.steps=1")
    config["distill"] = {"teachers": [str(p) for p in teachers], "adversarial_weight": 0.1, "feature_matching": 0.1,
                         "critic": {"name": "patch_critic", "channels": 4, "num_layers_d": 2}}
    trainer = DistillationTrainer(config, tmp_path / "run")
    doses = []
    trainer.critic.register_forward_pre_hook(lambda module, inputs: doses.append(inputs[0][:, -1:].detach()))
    batch = trainer.make_batch(0)
    outside = batch["possible_dose_mask"] == 0
    assert outside.any() and batch["teacher_dose"][:, :1][outside].abs().max() > 0  # the teachers' mean is not masked
    trainer.train_step(batch)
    assert len(doses) == 4  # critic step (real, fake), the student's adversarial term, feature matching's teacher
    assert all(dose[outside].abs().max() == 0 and dose[~outside].abs().max() > 0 for dose in doses)


def test_teachers_must_have_the_students_beam_channels(tiny_packs, teachers, tmp_path: Path) -> None:
    config = tiny_config(tiny_packs, "data.beam_angles=[0,120,240]")  # the tiny teachers have no beam channels
    config["distill"] = {"teachers": [str(p) for p in teachers]}
    with pytest.raises(ValueError, match="beam angles"):
        DistillationTrainer(config, tmp_path / "run")


def test_without_an_adversarial_term_the_critic_is_not_run(tiny_packs, teachers, tmp_path: Path) -> None:
    config = tiny_config(tiny_packs, "optim.steps=2", "validate_every=2")
    config["distill"] = {"teachers": [str(p) for p in teachers], "adversarial_weight": 0.0,
                         "critic": {"name": "patch_critic", "channels": 4, "num_layers_d": 2}}
    trainer = DistillationTrainer(config, tmp_path / "run")
    before = [p.detach().clone() for p in trainer.critic.parameters()]
    history = trainer.fit()
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.critic.parameters()))
    assert "critic_loss" not in history[-1] and history[-1]["soft_loss"] > 0


def test_a_detached_uncertainty_student_is_exported_as_it_trained(tiny_packs, teachers, tmp_path: Path) -> None:
    config = tiny_config(tiny_packs, "optim.steps=2", "validate_every=2")
    config["network"] = {"name": "searched", "channels": [4, 8, 16], "stem_stride": 2}  # the plain genotype
    config["distill"] = {"teachers": [str(p) for p in teachers], "adversarial_weight": 0.0, "detach_uncertainty": True}
    trainer = DistillationTrainer(config, tmp_path / "run")
    history = trainer.fit()
    assert history[-1]["uncertainty_loss"] > 0
    exported = json.loads((tmp_path / "run" / "best" / "config.json").read_text())
    assert exported["network"]["detached_uncertainty"] is True
    student = load_predictor(str(tmp_path / "run" / "best"), device=torch.device("cpu"))
    assert student.network.detached_uncertainty
    dose, uncertainty = student.predict_with_uncertainty(make_phantom((32, 32, 32)), tta=False)
    assert uncertainty is not None and uncertainty.shape == dose.shape
    config = tiny_config(tiny_packs)  # a MONAI U-Net student has no readout to detach
    config["distill"] = {"teachers": [str(p) for p in teachers], "detach_uncertainty": True}
    with pytest.raises(ValueError, match="needs a searched student"):
        DistillationTrainer(config, tmp_path / "unet")


def test_the_ground_truth_term_is_the_trainers_loss_with_its_dvh_term(tiny_packs, teachers, tmp_path: Path) -> None:
    truth_losses = []
    for dvh_weight in (0.0, 1.0):
        config = tiny_config(tiny_packs, "optim.steps=1", f"loss.dvh_weight={dvh_weight}")
        config["distill"] = {"teachers": [str(p) for p in teachers], "adversarial_weight": 0.0}
        trainer = DistillationTrainer(config, tmp_path / f"run{dvh_weight}")
        trainer.train_step(trainer.make_batch(0))
        truth_losses.append(trainer.step_log["truth_loss"])
    assert truth_losses[1] > truth_losses[0]  # the same student, batch and dose, plus the sorted-dose (DVH) L1


def test_distill_cli_and_ensemble_predict_writes_uncertainty(tiny_packs, teachers, phantom_split, tmp_path: Path) -> None:
    result = runner.invoke(app, ["distill", "-o", str(tmp_path / "run"), "--teachers", str(teachers[0]),
                                 "--teachers", str(teachers[1]), "--student", "unet",
                                 f"data.train={tiny_packs / 'train'}", f"data.validation={tiny_packs / 'validation'}",
                                 "data.resolution=32", "optim.steps=2", "validate_every=2", *TINY_NETWORK,
                                 "distill.critic.channels=4", "distill.critic.num_layers_d=2"])
    assert result.exit_code == 0, result.output
    ensemble = tmp_path / "ensemble"
    ensemble_of(teachers, ensemble)
    shutil.copytree(phantom_split / "pt_1", tmp_path / "in" / "pt_1")
    result = runner.invoke(app, ["predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "pred"), "-m", str(ensemble),
                                 "--format", "nifti", "--no-tta"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == ["pt_1.nii.gz", "pt_1_uncertainty.nii.gz"]


def test_distill_cli_warm_starts_a_student_and_keeps_its_lineage(tiny_packs, teachers, tmp_path: Path) -> None:
    common = ["--teachers", str(teachers[0]), "--student", "unet", f"data.train={tiny_packs / 'train'}",
              f"data.validation={tiny_packs / 'validation'}", "data.resolution=32", "optim.steps=2", "validate_every=2",
              *TINY_NETWORK, "distill.adversarial_weight=0"]
    assert runner.invoke(app, ["distill", "-o", str(tmp_path / "first"), "--threads", "1", *common]).exit_code == 0
    first = load_predictor(str(tmp_path / "first" / "best"), device=torch.device("cpu"))
    result = runner.invoke(app, ["distill", "-o", str(tmp_path / "second"), "--init", str(tmp_path / "first" / "best"),
                                 *common, "optim.lr=0"])  # lr 0: the warm-started weights stay as they were
    assert result.exit_code == 0, result.output
    second = load_predictor(str(tmp_path / "second" / "best"), device=torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(first.network.state_dict().values(), second.network.state_dict().values()))
    config = json.loads((tmp_path / "second" / "best" / "config.json").read_text())
    assert [stage["init"] for stage in config["lineage"]] == [None, str(tmp_path / "first" / "best")]
    result = runner.invoke(app, ["distill", "-o", str(tmp_path / "second"), "--resume", "--init", "x"])
    assert result.exit_code != 0 and "--init" in result.output


def test_distill_needs_teachers(tiny_packs, tmp_path: Path) -> None:
    result = runner.invoke(app, ["distill", "-o", str(tmp_path / "run"), "--teachers", "no-such-model",
                                 f"data.train={tiny_packs / 'train'}", f"data.validation={tiny_packs / 'validation'}"])
    assert result.exit_code == 2 and "no model 'no-such-model'" in result.output
    result = runner.invoke(app, ["distill", "-o", str(tmp_path / "run"), f"data.train={tiny_packs / 'train'}"])
    assert result.exit_code == 2 and "give the teachers" in result.output


def test_distill_resumes_from_its_own_config(tiny_packs, teachers, tmp_path: Path) -> None:
    common = [f"data.train={tiny_packs / 'train'}", f"data.validation={tiny_packs / 'validation'}", "data.resolution=32",
              "optim.steps=2", "validate_every=1", "checkpoint_every=1", *TINY_NETWORK, "distill.critic.channels=4",
              "distill.critic.num_layers_d=2"]
    args = ["distill", "-o", str(tmp_path / "run"), "--teachers", str(teachers[0]), "--teachers", str(teachers[1])]
    assert runner.invoke(app, args + common).exit_code == 0
    result = runner.invoke(app, ["distill", "-o", str(tmp_path / "run"), "--resume"])
    assert result.exit_code == 0, result.output  # already at its last step: nothing left to do, no error
