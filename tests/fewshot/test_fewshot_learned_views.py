"""The learned views' meta-loop: the outer (query) loss reaches every generator parameter through the inner step."""

from __future__ import annotations

import torch

from dosepred.fewshot.data import EpisodeSampler, PatchSet
from dosepred.engine.config import FEWSHOT_DEFAULTS, load_config
from dosepred.fewshot.train import ContrastiveModel, FewShotTrainer, _learned_step
from dosepred.fewshot.views import ViewFamily
from dosepred.fewshot.networks import ViewGenerator


def _toy_patches(signal: float = 0.7, seed: int = 0) -> PatchSet:
    """Four classes of 16x16 images: a bright square in one quadrant each, plus noise."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(48, 1, 16, 16, generator=generator) * 0.3
    labels = torch.arange(4).repeat_interleave(12)
    for i, label in enumerate(labels.tolist()):
        row, col = divmod(label, 2)
        images[i, 0, row * 8 + 2: row * 8 + 6, col * 8 + 2: col * 8 + 6] += signal
    return PatchSet(images, labels, ("a", "b", "c", "d"), tuple(str(i) for i in range(48)))


def _one_learned_step(inner_lr: float) -> tuple[ViewGenerator, ContrastiveModel]:
    torch.manual_seed(0)
    patches = _toy_patches(signal=0.0)  # pure noise: the query loss is far from saturated, so it has a gradient
    settings = {**FEWSHOT_DEFAULTS["fewshot"], "ways": 4, "shots": 2, "queries": 3, "channels": 8, "depth": 2,
                "inner_lr": inner_lr}
    model = ContrastiveModel(channels=8, depth=2, image_size=16)
    generator = ViewGenerator()
    episode = EpisodeSampler(patches.labels, ways=4, shots=2, queries=3).sample()
    images = patches.images[torch.cat([episode.support, episode.query])]
    optimizer = torch.optim.SGD(generator.parameters(), lr=0.0)
    row = _learned_step(model, generator, optimizer, images, episode, settings, ViewFamily(),
                        torch.Generator().manual_seed(0))
    assert set(row) >= {"proto_loss", "contrastive_loss", "outer_loss"}
    return generator, model


def test_fewshot_outer_loss_reaches_every_generator_parameter() -> None:
    generator, model = _one_learned_step(inner_lr=0.1)
    for name, parameter in generator.named_parameters():
        assert parameter.grad is not None, name
        assert parameter.grad.abs().sum() > 0, name
    # The encoder and the projection head get their own gradient (ProtoNet + the views' InfoNCE).
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_fewshot_generator_gradient_flows_only_through_the_inner_step() -> None:
    # With a zero inner step the stepped encoder is the encoder itself: the views cannot change the outer loss.
    generator, _ = _one_learned_step(inner_lr=0.0)
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in generator.parameters())


def test_fewshot_training_learns_the_toy_classes(tmp_path, monkeypatch) -> None:
    patches = _toy_patches()
    monkeypatch.setattr("dosepred.fewshot.train.load_patches", lambda *args, **kwargs: patches)
    for method in ("protonet", "random", "learned"):
        config = load_config(None, [f"fewshot.method={method}", "optim.steps=30", "fewshot.ways=4", "fewshot.shots=2",
                                    "fewshot.queries=3", "fewshot.channels=8", "fewshot.depth=2", "data.patch_size=16",
                                    "validate_every=10"], defaults=FEWSHOT_DEFAULTS)
        trainer = FewShotTrainer(config, tmp_path / method)
        history = trainer.fit()
        assert [row["step"] for row in history] == [10, 20, 30]
        assert history[-1]["accuracy"] > 0.9, (method, history)
        assert (trainer.generator is not None) == (method == "learned")


def test_fewshot_training_resumes_exactly(tmp_path, monkeypatch) -> None:
    patches = _toy_patches()
    monkeypatch.setattr("dosepred.fewshot.train.load_patches", lambda *args, **kwargs: patches)
    overrides = ["fewshot.method=learned", "optim.steps=6", "fewshot.ways=4", "fewshot.shots=2", "fewshot.queries=3",
                 "fewshot.channels=8", "fewshot.depth=2", "data.patch_size=16", "validate_every=3", "checkpoint_every=3"]
    straight = FewShotTrainer(load_config(None, overrides, defaults=FEWSHOT_DEFAULTS), tmp_path / "straight")
    straight.fit()
    interrupted = FewShotTrainer(load_config(None, [*overrides, "optim.steps=3"], defaults=FEWSHOT_DEFAULTS),
                                 tmp_path / "resumed")
    interrupted.fit()
    (tmp_path / "resumed" / "config.yaml").write_text((tmp_path / "straight" / "config.yaml").read_text())
    resumed = FewShotTrainer(load_config(tmp_path / "resumed" / "config.yaml", defaults=FEWSHOT_DEFAULTS),
                             tmp_path / "resumed", resume=True)
    assert resumed.step == 3
    resumed.fit()
    for name, value in straight.network.state_dict().items():
        assert torch.equal(value, resumed.network.state_dict()[name]), name
    for name, value in straight.generator.state_dict().items():
        assert torch.equal(value, resumed.generator.state_dict()[name]), name


def test_fewshot_methods_start_from_the_same_encoder_at_one_seed(tmp_path, monkeypatch) -> None:
    """The methods' comparison is paired: the view generator is built after the encoder, not before it."""
    patches = _toy_patches()
    monkeypatch.setattr("dosepred.fewshot.train.load_patches", lambda *args, **kwargs: patches)
    starts = {}
    for method in ("protonet", "learned"):
        config = load_config(None, [f"fewshot.method={method}", "fewshot.ways=4", "fewshot.shots=2", "fewshot.queries=3",
                                    "fewshot.channels=8", "fewshot.depth=2", "data.patch_size=16"],
                             defaults=FEWSHOT_DEFAULTS)
        starts[method] = FewShotTrainer(config, tmp_path / method).network.state_dict()
    assert all(torch.equal(value, starts["learned"][name]) for name, value in starts["protonet"].items())
