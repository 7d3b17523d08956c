"""benchmarks/distill_ablation.py --reference: each model's dose score against a reference model's prediction."""

import sys

import pytest

from benchmarks import distill_ablation


def run(monkeypatch, capsys, *arguments: str) -> dict[str, list[str]]:
    monkeypatch.setattr(sys, "argv", ["distill_ablation.py", *arguments])
    distill_ablation.main()
    rows = capsys.readouterr().out.splitlines()[1:]
    return {row.split()[0]: row.split()[1:] for row in rows}


def test_reference_distance_is_zero_to_itself_and_positive_to_another_model(
        monkeypatch, capsys, tiny_packs, tiny_model, two_output_model):
    rows = run(monkeypatch, capsys, f"other={two_output_model}", f"reference={tiny_model}", f"same={tiny_model}",
               "--validation", str(tiny_packs / "validation"), "--threads", "1", "--latency-patients", "1",
               "--reference", "reference")
    assert list(rows) == ["reference", "other", "same"]  # the reference predicts first
    assert len(rows["reference"]) == 4  # dose, DVH, params, latency: no distance to itself
    assert float(rows["same"][2]) == 0.0
    assert float(rows["other"][2]) > 0.0


def test_an_unknown_reference_is_refused(monkeypatch, capsys, tiny_packs, tiny_model):
    with pytest.raises(SystemExit):
        run(monkeypatch, capsys, f"a={tiny_model}", "--validation", str(tiny_packs / "validation"),
            "--reference", "b")
    assert "is not one of the listed models: a" in capsys.readouterr().err


def test_the_spread_distance_needs_an_uncertainty_on_both_sides(monkeypatch, capsys, tiny_packs, tiny_model,
                                                               two_output_model):
    rows = run(monkeypatch, capsys, f"reference={two_output_model}", f"same={two_output_model}", f"single={tiny_model}",
               "--validation", str(tiny_packs / "validation"), "--threads", "1", "--latency-patients", "1",
               "--reference", "reference", "--tta")  # the reference's spread is always the mirrored one
    assert len(rows["same"]) == 6 and float(rows["same"][2]) == 0.0 and float(rows["same"][3]) == 0.0
    assert len(rows["reference"]) == 5 and float(rows["reference"][2]) >= 0.0  # its mean spread
    assert len(rows["single"]) == 5  # dose, DVH, distance, params, latency: no uncertainty to compare


def test_the_reference_spread_is_the_mirrored_one_with_or_without_tta(monkeypatch, capsys, tiny_packs, two_output_model):
    """A student learns the spread of mirrored members: its error is measured against that, whatever --tta says."""
    arguments = [f"reference={two_output_model}", "--validation", str(tiny_packs / "validation"), "--threads", "1",
                 "--latency-patients", "1", "--reference", "reference"]
    plain, mirrored = run(monkeypatch, capsys, *arguments), run(monkeypatch, capsys, *arguments, "--tta")
    assert plain["reference"][2] == mirrored["reference"][2]  # its own row: its mean spread
    assert plain["reference"][0] != mirrored["reference"][0]  # while its dose is scored as asked
