"""Distillation: a student learns from the teachers' ensemble, the ground truth and a trained critic.

Before training, the frozen teachers predict every training patient once (with test-time mirroring, as
the ensemble predicts); their mean (the soft target) and spread (std, the uncertainty target) become one
more volume of each sample, "teacher_dose" (float16, as the beam channels), augmented together with the dose.
This costs one pass of each teacher per patient instead of one per step, and assumes the teachers roughly
commute with the small augmentations (mirroring, 5 degree rotations, 3% shifts) they were themselves trained
with. The targets are kept in a file (``distill.teacher_targets``, by default in the run folder) stamped with
a fingerprint of the teachers' weights, the patients and the data settings: a resumed run, or another run
pointed at the same file (an ablation), reads them instead of paying the teachers' passes again (three
128^3 teachers over 169 patients: 10 minutes on this project's 2-core CPU).

Each step: the critic (a conditional patch discriminator on [inputs, dose inside the possible-dose mask]) is
updated first with its own optimiser and a least-squares objective (teacher mean = real, student = fake); then
the student minimises

    truth_weight * (L1(dose, ground truth) + loss.dvh_weight * sorted-dose L1) + soft_weight * L1(dose, teacher mean)
    + uncertainty_weight * L1(second channel, teacher std) + adversarial_weight * (critic(student) - 1)^2
    [+ feature_matching * L1 between the critic's features of student and teacher doses]

with every L1 taken inside the possible-dose mask; the ground-truth term is the trainer's own loss, so the
student learns with the recipe its teachers learnt with. Setting weights to 0 gives the ablations (ground
truth only; + distillation; + adversarial critic); with neither an adversarial term nor feature matching the
critic is not run at all. With ``detach_uncertainty`` (a searched student) the uncertainty channel is a
readout of the student's last features whose gradient stops there, so the spread term trains that readout
only and the network's capacity goes to the dose.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from dosepred.engine.config import DISTILL_DEFAULTS
from dosepred.engine.losses import masked_l1
from dosepred.engine.trainer import Trainer
from dosepred.inference.ensemble import EnsemblePredictor
from dosepred.inference.loader import load_predictor
from dosepred.inference.predictor import Predictor
from dosepred.io.files import atomic_file
from dosepred.networks import create_network
from dosepred.progress import Progress

TARGETS_FILE = "teacher_targets.safetensors"


class DistillationTrainer(Trainer):
    """The trainer, with teachers, a critic and a two-channel (dose, uncertainty) student."""

    metric_fields = Trainer.metric_fields + ("truth_loss", "soft_loss", "uncertainty_loss", "adversarial_loss",
                                             "critic_loss")

    def __init__(self, config: dict[str, Any], run_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
                 progress: Progress | None = None) -> None:
        """``progress(phase, done, total)`` also reports the teachers' passes over the training patients."""
        self.distill = {**DISTILL_DEFAULTS["distill"], **config.get("distill", {})}
        network = {**config["network"], "out_channels": 2}  # dose + uncertainty
        if self.distill["detach_uncertainty"]:
            if network.get("name") != "searched":
                raise ValueError("distill.detach_uncertainty needs a searched student (--student FILE), "
                                 f"not the network {network.get('name')!r}")
            network["detached_uncertainty"] = True
        config = {**config, "network": network}
        super().__init__(config, run_dir, resume=resume, overwrite=overwrite, progress=progress)

    def build_network(self) -> nn.Module:
        critic = {"in_channels": self.network_config()["in_channels"] + 1, **self.distill["critic"]}
        self.critic = create_network(**critic).to(self.device)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=self.distill["critic_lr"], betas=(0.5, 0.999))
        return super().build_network()

    def build_data(self) -> None:
        super().build_data()
        teachers = self.load_teachers()
        train = self.train_data
        path = Path(self.distill["teacher_targets"] or self.run_dir / TARGETS_FILE)
        fingerprint = targets_fingerprint(teachers, train.paths, self.config["data"])
        targets = read_targets(path, fingerprint, len(train))
        if targets is None:
            targets = []
            for index in range(len(train)):
                targets.append(teacher_targets(teachers, train.inputs(index)["image"][0]))
                if self.progress is not None:
                    self.progress("teacher targets", index + 1, len(train))
            if self.topology.is_main:
                write_targets(path, fingerprint, targets)
        train.attach("teacher_dose", targets)

    def load_teachers(self) -> list[Predictor]:
        if len(self.distill["teachers"]) < 1:
            raise ValueError("distillation needs at least one teacher (distill.teachers)")
        teachers = []
        for name in self.distill["teachers"]:
            loaded = load_predictor(name, device=self.device, amp=self.amp)  # amp: false means fp32 targets too
            members = loaded.members if isinstance(loaded, EnsemblePredictor) else [loaded]  # an ensemble: each member
            for predictor in members:
                data = self.config["data"]
                if predictor.resolution != data["resolution"]:
                    raise ValueError(f"teacher {name} works at {predictor.resolution}^3, the student at "
                                     f"{data['resolution']}^3")
                if predictor.beam_angles != data["beam_angles"]:  # it is fed the student's inputs
                    raise ValueError(f"teacher {name} was trained with the beam angles {predictor.beam_angles}, "
                                     f"the student's data has {data['beam_angles']}")
                teachers.append(predictor)
        return teachers

    def train_step(self, batch: dict[str, torch.Tensor]) -> float:
        image, mask = batch["image"], batch["possible_dose_mask"]
        soft, spread = batch["teacher_dose"][:, :1].float(), batch["teacher_dose"][:, 1:2].float()

        self.model.train()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            output = self.model(image).float()
        dose, uncertainty = output[:, :1], output[:, 1:2]

        d = self.distill
        losses = {"truth_loss": self.loss(dose, batch), "soft_loss": masked_l1(dose, soft, mask),
                  "uncertainty_loss": masked_l1(uncertainty, spread, mask)}
        loss = (d["truth_weight"] * losses["truth_loss"] + d["soft_weight"] * losses["soft_loss"]
                + d["uncertainty_weight"] * losses["uncertainty_loss"])
        logged: dict[str, float] = {}
        if d["adversarial_weight"] or d["feature_matching"]:
            # The critic sees the doses where they are scored only: outside the possible-dose mask neither the
            # student's nor the teachers' output is constrained, and there the two differ by themselves.
            real, fake = soft * mask, dose * mask
            logged["critic_loss"] = self.critic_step(image, real, fake.detach())
            student_features = self.critic(torch.cat([image, fake], dim=1))
            losses["adversarial_loss"] = ((student_features[-1] - 1) ** 2).mean()
            loss = loss + d["adversarial_weight"] * losses["adversarial_loss"]
            if d["feature_matching"]:
                with torch.no_grad():
                    teacher_features = self.critic(torch.cat([image, real], dim=1))
                loss = loss + d["feature_matching"] * sum(
                    torch.nn.functional.l1_loss(s, t) for s, t in zip(student_features[:-1], teacher_features[:-1]))
        self.optimize(loss)
        self.step_log = {key: float(value.detach()) for key, value in losses.items()} | logged
        return float(loss.detach())

    def critic_step(self, image: torch.Tensor, real: torch.Tensor, fake: torch.Tensor) -> float:
        """One least-squares update of the critic: teacher ensemble doses are real, student doses fake."""
        self.critic.train()
        real_score = self.critic(torch.cat([image, real], dim=1))[-1]
        fake_score = self.critic(torch.cat([image, fake], dim=1))[-1]
        loss = 0.5 * (((real_score - 1) ** 2).mean() + (fake_score**2).mean())
        self.critic_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.critic_optimizer.step()
        self.critic.zero_grad(set_to_none=True)  # the student's adversarial term must not leave grads behind
        return float(loss.detach())

    def checkpoint_state(self) -> dict[str, Any]:
        return super().checkpoint_state() | {"critic": self.critic.state_dict(),
                                             "critic_optimizer": self.critic_optimizer.state_dict()}

    def restore_state(self, state: dict[str, Any]) -> None:
        super().restore_state(state)
        self.critic.load_state_dict(state["critic"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])


def teacher_targets(teachers: list[Predictor], image: torch.Tensor) -> torch.Tensor:
    """(2, *shape) float16 on the CPU: the teachers' mean dose and its spread (std) for one input volume."""
    doses = torch.stack([teacher.predict_volume(torch.as_tensor(image).as_subclass(torch.Tensor))[:1].cpu()
                         for teacher in teachers])
    return torch.cat([doses.mean(dim=0), doses.std(dim=0, unbiased=False)]).half()


def targets_fingerprint(teachers: list[Predictor], patients: list[Path], data: dict[str, Any]) -> str:
    """What the teacher targets depend on: each teacher's weights and input settings, the patients (by name and
    file size) and the data section's resolution and beam angles."""
    digest = hashlib.sha256()
    for teacher in teachers:
        for name, tensor in teacher.network.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        digest.update(json.dumps([teacher.resolution, teacher.beam_angles, teacher.amp]).encode())
    sizes = [path.stat().st_size if path.is_file() else None for path in patients]
    digest.update(json.dumps([[path.name for path in patients], sizes, data["resolution"],
                              data.get("beam_angles")]).encode())
    return digest.hexdigest()


def read_targets(path: Path, fingerprint: str, count: int) -> list[torch.Tensor] | None:
    """The targets kept in ``path`` if it holds ``count`` of them for this ``fingerprint``; otherwise None."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            if (handle.metadata() or {}).get("fingerprint") != fingerprint or len(handle.keys()) != count:
                return None
            return [handle.get_tensor(str(index)) for index in range(count)]
    except (OSError, SafetensorError):
        return None


def write_targets(path: Path, fingerprint: str, targets: list[torch.Tensor]) -> None:
    """Keep the targets in ``path`` (written beside it, then moved: never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as partial:
        save_file({str(index): target.contiguous() for index, target in enumerate(targets)}, str(partial),
                  metadata={"fingerprint": fingerprint})
