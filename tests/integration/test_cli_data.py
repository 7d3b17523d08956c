"""`dosepred prepare`, `phantom` and `evaluate` end to end, as a user runs them."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from dosepred.io import nifti, openkbp_csv, pack
from dosepred.cli import app
from tests.conftest import SAMPLE, SAMPLE_PATIENTS, requires_openkbp

runner = CliRunner()


@requires_openkbp
def test_prepare_from_a_tarball(tmp_path: Path) -> None:
    archive = tmp_path / "validation-pats.tar.xz"
    with tarfile.open(archive, "w:xz") as tar:
        tar.add(SAMPLE / "validation-pats" / "pt_201", arcname="validation-pats/pt_201")
        tar.add(SAMPLE / "train-pats" / "pt_196", arcname="validation-pats/pt_196")
    result = runner.invoke(app, ["prepare", str(archive), "-o", str(tmp_path / "nii")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "nii").iterdir()) == ["pt_196", "pt_201"]
    original = openkbp_csv.read_patient(SAMPLE_PATIENTS[2])
    converted = nifti.read_patient(tmp_path / "nii" / "pt_201")
    np.testing.assert_array_equal(converted.dose, original.dose)


def test_a_tarball_bomb_stops_before_it_fills_the_disk(tmp_path: Path, monkeypatch) -> None:
    import io
    import tempfile

    from dosepred.io import uploads

    archive = tmp_path / "bomb.tar.xz"
    with tarfile.open(archive, "w:xz") as tar:  # 40 MiB of zeros in a few kilobytes
        for name in ("split/pt_1/ct.csv", "split/pt_2/ct.csv"):
            info = tarfile.TarInfo(name)
            info.size = 20 * 2**20
            tar.addfile(info, io.BytesIO(bytes(info.size)))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    result = runner.invoke(app, ["prepare", str(archive), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and "100 times its size" in " ".join(result.output.split()), result.output
    assert not any((tmp_path / "tmp").iterdir())  # the little it unpacked is gone too
    assert uploads.MAX_TAR_RATIO * archive.stat().st_size < 20 * 2**20  # the first member alone is over the bound


def test_prepare_reports_a_bad_patient_and_converts_the_rest(phantom_split: Path, tmp_path: Path) -> None:
    split = shutil.copytree(phantom_split, tmp_path / "split")
    (split / "pt_2" / "ct.csv").write_text("garbage\n")
    result = runner.invoke(app, ["prepare", str(split), "-o", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "pt_2" in result.output and "wrong header" in result.output
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["pt_1"]  # nothing half-written


def test_prepare_writes_no_patient_over_another(phantom_split: Path, tmp_path: Path) -> None:
    packs = tmp_path / "packs"
    assert runner.invoke(app, ["prepare", str(phantom_split), "-o", str(packs), "--format", "pack"]).exit_code == 0
    (packs / "pt_1.dpk").rename(packs / "pt_9.dpk")  # holds pt_1, named otherwise
    shutil.copy(packs / "pt_2.dpk", packs / "pt_3.dpk")
    result = runner.invoke(app, ["prepare", str(packs), "-o", str(tmp_path / "out")])
    assert result.exit_code == 1 and "a pack file's name must be its patient id" in " ".join(result.output.split())
    mixed = shutil.copytree(phantom_split, tmp_path / "mixed")
    shutil.copy(packs / "pt_2.dpk", mixed / "pt_2.dpk")  # a folder pt_2 and a pack pt_2: one id twice
    result = runner.invoke(app, ["prepare", str(mixed), "-o", str(tmp_path / "mixed_out")])
    assert result.exit_code == 1 and "has the id 'pt_2'" in " ".join(result.output.split()), result.output
    (tmp_path / "blocked").mkdir()
    (tmp_path / "blocked" / "pt_1").write_text("a file where the patient's folder goes")
    result = runner.invoke(app, ["prepare", str(phantom_split), "-o", str(tmp_path / "blocked")])
    assert result.exit_code == 1 and "wrote 1 of 2" in result.output and "Traceback" not in result.output


def test_prepare_pack_round_trip(phantom_split: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["prepare", str(phantom_split), "-o", str(tmp_path / "pack"), "--format", "pack"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "pack").iterdir()) == ["pt_1.dpk", "pt_2.dpk"]
    coarse = runner.invoke(app, ["prepare", str(phantom_split), "-o", str(tmp_path / "coarse"), "--format", "pack",
                                 "--ct-tolerance", "32"])
    assert coarse.exit_code == 0, coarse.output
    original, rough = openkbp_csv.read_patient(phantom_split / "pt_1"), pack.read_patient(tmp_path / "coarse" / "pt_1.dpk")
    assert 1 < np.abs(np.round(original.ct) - rough.ct).max() <= 32
    assert (tmp_path / "coarse" / "pt_1.dpk").stat().st_size < (tmp_path / "pack" / "pt_1.dpk").stat().st_size


def test_prepare_missing_source(tmp_path: Path) -> None:
    result = runner.invoke(app, ["prepare", str(tmp_path / "nope"), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "no such file or folder" in result.output


def test_evaluate_scores_and_writes_json(phantom_split: Path, tmp_path: Path) -> None:
    predictions = tmp_path / "pred"
    patient = openkbp_csv.read_patient(phantom_split / "pt_1")
    openkbp_csv.write_submission(patient.dose, predictions / "pt_1.csv")
    nifti.write_volume(np.maximum(patient.dose - 1.0, 0) * patient.possible_dose_mask, patient.spacing,
                       predictions / "pt_2.nii.gz")
    result = runner.invoke(app, ["evaluate", str(phantom_split), str(predictions), "--json", str(tmp_path / "s.json")])
    assert result.exit_code == 0, result.output
    scores = json.loads((tmp_path / "s.json").read_text())
    assert scores["n"] == 2
    assert scores["patients"]["pt_1"] == 0.0 and scores["patients"]["pt_2"] > 0.5
    assert "dose score" in result.output and "PTV70" in result.output


def test_evaluate_missing_prediction_is_an_error(phantom_split: Path, tmp_path: Path) -> None:
    predictions = tmp_path / "pred"
    patient = openkbp_csv.read_patient(phantom_split / "pt_1")
    openkbp_csv.write_submission(patient.dose, predictions / "pt_1.csv")
    result = runner.invoke(app, ["evaluate", str(phantom_split), str(predictions)])
    assert result.exit_code == 2
    assert "no prediction for 1 of 2" in result.output and "pt_2" in result.output
    (predictions / "pt_2.dcm").write_bytes(b"")  # an RT Dose from predict's DICOM route: say how to score it
    result = runner.invoke(app, ["evaluate", str(phantom_split), str(predictions)])
    assert result.exit_code == 2 and "predict --format nifti" in " ".join(result.output.split())
    result = runner.invoke(app, ["evaluate", str(phantom_split), str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "no such folder" in result.output


def test_phantom_writes_each_patient_format_and_refuses_rtdose(tmp_path: Path) -> None:
    for fmt, reader in (("openkbp-csv", openkbp_csv.read_patient), ("nifti", nifti.read_patient)):
        result = runner.invoke(app, ["phantom", "-o", str(tmp_path / fmt), "--format", fmt])
        assert result.exit_code == 0, result.output
        assert reader(tmp_path / fmt / "phantom").dose is not None
    result = runner.invoke(app, ["phantom", "-o", str(tmp_path / "dicom"), "--format", "rtdose"])
    assert result.exit_code == 2 and not (tmp_path / "dicom").exists()  # not silently written as CSV


def test_prepare_clears_what_a_killed_run_left_in_its_output(phantom_split: Path, tmp_path: Path) -> None:
    stale = tmp_path / "out" / ".pt_1.4194399-0123456789ab.tmp"  # a pid no process has (above Linux's maximum)
    stale.mkdir(parents=True)
    result = runner.invoke(app, ["prepare", str(phantom_split), "-o", str(tmp_path / "out"), "--format", "pack"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["pt_1.dpk", "pt_2.dpk"]


def test_a_bzip2_tarball_is_a_source(phantom_split: Path, tmp_path: Path) -> None:
    from dosepred.io import sources

    with tarfile.open(tmp_path / "split.tar.bz2", "w:bz2") as tar:
        tar.add(phantom_split, arcname="split")
    with sources.open_patients(tmp_path / "split.tar.bz2") as paths:
        assert [path.name for path in paths] == ["pt_1", "pt_2"]
