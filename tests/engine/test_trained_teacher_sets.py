"""benchmarks/trained_teacher_sets.py: every set of trained members scored as an ensemble beside its best member."""

import json
import sys

import pytest

from benchmarks import trained_teacher_sets


def test_every_set_is_scored_and_a_copy_adds_nothing(monkeypatch, capsys, tiny_packs, tiny_model, two_output_model,
                                                       tmp_path):
    monkeypatch.setattr(sys, "argv", ["trained_teacher_sets.py", f"a={tiny_model}", f"b={two_output_model}",
                                      f"copy={tiny_model}", "--validation", str(tiny_packs / "validation"),
                                      "--threads", "1", "--k", "2", "--diversity-weight", "0",
                                      "--json", str(tmp_path / "sets.json")])
    trained_teacher_sets.main()
    result = json.loads((tmp_path / "sets.json").read_text())
    sets = {",".join(row["set"]): row for row in result["sets"]}
    assert list(sets) == ["a,b", "a,copy", "b,copy", "a,b,copy"]
    members = result["members"]
    assert sets["a,copy"]["mean_pairwise_distance_gy"] == 0.0
    assert sets["a,copy"]["dose_score"] == pytest.approx(members["a"]["dose_score"], rel=1e-6)
    assert sets["a,b"]["mean_pairwise_distance_gy"] > 0.0
    for row in sets.values():
        assert row["gain_gy"] == pytest.approx(row["best_member_dose_score"] - row["dose_score"])
    best_two = sorted(members, key=lambda name: members[name]["dose_score"])[:2]
    assert result["rule"]["chosen"] == best_two  # lambda 0: the plain top k
    assert "| a, b |" in capsys.readouterr().out


def test_a_set_naming_an_unknown_member_is_refused(monkeypatch, capsys, tiny_packs, tiny_model):
    monkeypatch.setattr(sys, "argv", ["trained_teacher_sets.py", f"a={tiny_model}", f"b={tiny_model}",
                                      "--sets", "a,c", "--validation", str(tiny_packs / "validation")])
    with pytest.raises(SystemExit):
        trained_teacher_sets.main()
    assert "c not among the models" in capsys.readouterr().err
