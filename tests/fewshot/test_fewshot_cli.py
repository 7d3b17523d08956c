"""dosepred fewshot train | eval end to end on tiny budgets, and its errors on bad input."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from dosepred.cli import app
from dosepred.fewshot.data import CT_BASE
from dosepred.models import MODELS_DIR
from tests.conftest import SAMPLE, requires_openkbp

runner = CliRunner()


@pytest.fixture(scope="module")
def digit_models(tmp_path_factory):
    pytest.importorskip("sklearn")
    root = tmp_path_factory.mktemp("fewshot")
    for method in ("protonet", "learned"):
        result = runner.invoke(app, ["fewshot", "train", "-o", str(root / method), "data.dataset=digits",
                                     f"fewshot.method={method}", "optim.steps=3", "fewshot.shots=2", "fewshot.queries=3",
                                     "data.patch_size=16"])
        assert result.exit_code == 0, result.output
    return root


@pytest.fixture(scope="module")
def digit_best(digit_models):
    """The model folders of the digit runs."""
    return {method: digit_models / method / "best" for method in ("protonet", "learned")}


def test_fewshot_cli_train_and_eval_digits(digit_models, digit_best, tmp_path) -> None:
    assert (digit_models / "learned" / "metrics.csv").is_file()
    assert (digit_best["learned"] / "generator.safetensors").is_file()
    assert not (digit_best["protonet"] / "generator.safetensors").exists()
    config = json.loads((digit_best["learned"] / "config.json").read_text())
    assert config["data"]["classes"] == ["0", "1", "2", "3", "4"] and config["train"]["steps"] == 3
    out = tmp_path / "table.json"
    result = runner.invoke(app, ["fewshot", "eval", str(digit_best["protonet"]), str(digit_best["learned"]),
                                 "--data", "digits", "--episodes", "20", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "5-way 1-shot" in result.output and "5-way 5-shot" in result.output
    table = json.loads(out.read_text())
    assert table["classes"] == ["5", "6", "7", "8", "9"] and [r["method"] for r in table["rows"]] == ["protonet", "learned"]
    for row in table["rows"]:
        for setting in ("5-way 1-shot", "5-way 5-shot"):
            assert 0.2 < row[setting]["mean"] <= 1.0 and 0 < row[setting]["ci95"] < 0.2 and row[setting]["episodes"] == 20


@pytest.mark.parametrize("arguments, message", [
    (["train", "-o", "{tmp}/x", "fewshot.method=mixup", "data.dataset=digits"], "unknown method"),
    (["train", "-o", "{tmp}/x", "data.dataset=ct", "data.patients={tmp}/nowhere"], "nowhere"),
    (["train", "-o", "{tmp}/x", "data.dataset=digits", "fewshot.ways=6"], "only 5 have them"),
    (["train", "-o", "{tmp}/x", "data.dataset=digits", "data.patch_size=20"], "multiple of 16"),
    (["train", "-o", "{tmp}/x", "fewshot.wayz=3"], "unknown key 'fewshot.wayz'"),
    (["train", "-o", "{tmp}/x", "data.dataset=digits", "device=meta"], "on the CPU only"),
    (["eval", "{tmp}", "--data", "digits"], "not a model folder"),
    (["eval", "{models}/protonet/best", "--data", "digits", "--shots", "0"], "--shots >= 1"),
    (["eval", "{models}/protonet/best", "--data", "ct"], "trained on digits"),
])
def test_fewshot_cli_errors(digit_models, tmp_path, arguments: list[str], message: str) -> None:
    arguments = [a.format(tmp=tmp_path, models=digit_models) for a in arguments]
    result = runner.invoke(app, ["fewshot", *arguments])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())


@requires_openkbp
def test_fewshot_cli_on_the_sample_patients(tmp_path) -> None:
    model = tmp_path / "ct" / "best"
    result = runner.invoke(app, ["fewshot", "train", "-o", str(tmp_path / "ct"), f"data.patients={SAMPLE / 'train-pats'}",
                                 "fewshot.method=random", "optim.steps=2", "fewshot.ways=3", "fewshot.shots=1",
                                 "fewshot.queries=2"])
    assert result.exit_code == 0, result.output
    config = json.loads((model / "config.json").read_text())
    assert config["data"]["classes"] == ["Brainstem", "SpinalCord", "Mandible", "PTV56", "PTV70"]
    # Queries come from other patients than their class's support: the two sample patients allow that, one does not.
    episodes = ["--ways", "3", "--shots", "1", "--queries", "2", "--episodes", "10"]
    result = runner.invoke(app, ["fewshot", "eval", str(model), "--patients", str(SAMPLE / "train-pats"), *episodes])
    assert result.exit_code == 0, result.output
    assert "3-way 1-shot" in result.output
    result = runner.invoke(app, ["fewshot", "eval", str(model), "--patients", str(SAMPLE / "validation-pats"), *episodes])
    assert result.exit_code == 2 and "from other sources (patients) than the support" in " ".join(result.output.split())


@pytest.mark.parametrize("variant, method", [("protonet", "protonet"), ("random-views", "random"),
                                             ("learned-views", "learned")])
def test_fewshot_shipped_models_load(variant: str, method: str) -> None:
    import torch

    from dosepred.fewshot.train import load_encoder

    folder = MODELS_DIR / "fewshot-ct" / variant
    encoder, config = load_encoder(folder)
    assert config["train"]["method"] == method and config["data"]["classes"] == list(CT_BASE)
    assert encoder(torch.zeros(2, 1, 32, 32)).shape == (2, 128)
    assert (folder / "generator.safetensors").is_file() == (method == "learned")
