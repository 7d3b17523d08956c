"""`dosepred predict` and `dosepred demo`: outputs, --continue, and clear errors on bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dosepred.io import nifti, openkbp_csv
from dosepred.io.phantom import make_phantom
from dosepred.cli import app
from dosepred.inference.loader import load_predictor
from dosepred.models import ModelError

runner = CliRunner()


@pytest.fixture
def patients(phantom_split: Path) -> Path:
    return phantom_split


def predict(*args: str):
    return runner.invoke(app, ["predict", *args])


def test_predicts_each_patient_zero_outside_the_mask(tiny_model: Path, patients: Path, tmp_path: Path) -> None:
    result = predict("-i", str(patients), "-o", str(tmp_path), "-m", str(tiny_model), "--no-tta")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pt_1.csv", "pt_2.csv"]
    dose = openkbp_csv.read_dense(tmp_path / "pt_1.csv")
    mask = openkbp_csv.read_mask(patients / "pt_1" / "possible_dose_mask.csv")
    assert dose.max() > 0 and not dose[~mask].any()


def test_tta_mirrors_and_continue_skips_done_patients(tiny_model: Path, patients: Path, tmp_path: Path) -> None:
    predictor = load_predictor(tiny_model, device=torch.device("cpu"))
    patient = make_phantom()
    plain, averaged = predictor.predict(patient, tta=False), predictor.predict(patient, tta=True)
    assert not np.array_equal(plain, averaged)
    result = predict("-i", str(patients / "pt_1"), "-o", str(tmp_path), "-m", str(tiny_model), "--format", "nifti")
    assert result.exit_code == 0
    before = (tmp_path / "pt_1.nii.gz").stat().st_mtime_ns
    result = predict("-i", str(patients), "-o", str(tmp_path), "-m", str(tiny_model), "--format", "nifti", "--continue")
    assert result.exit_code == 0 and "skipped 1" in result.output
    assert (tmp_path / "pt_1.nii.gz").stat().st_mtime_ns == before
    assert nifti.read_volume(tmp_path / "pt_2.nii.gz")[0].shape == (128, 128, 128)


def test_a_failing_patient_is_reported_and_the_rest_finish(tiny_model: Path, patients: Path, tmp_path: Path) -> None:
    source = shutil.copytree(patients, tmp_path / "in")
    (source / "pt_2" / "ct.csv").unlink()
    result = predict("-i", str(source), "-o", str(tmp_path / "out"), "-m", str(tiny_model), "--no-tta")
    assert result.exit_code == 1
    assert "pt_2" in result.output and "missing ct.csv" in result.output
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["pt_1.csv"]  # nothing partial


def test_a_patient_without_a_target_is_refused(tiny_model: Path, patients: Path, tmp_path: Path) -> None:
    """A forgotten PTV70.csv would otherwise give a plausible dose planned around nothing."""
    source = shutil.copytree(patients, tmp_path / "in")
    for target in source.glob("pt_2/PTV*.csv"):
        target.rename(target.with_name(target.name.replace("PTV", "PTV_")))  # names no reader maps
    result = predict("-i", str(source), "-o", str(tmp_path / "out"), "-m", str(tiny_model), "--no-tta")
    assert result.exit_code == 1 and "no target: none of PTV56, PTV63, PTV70" in " ".join(result.output.split())
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["pt_1.csv"]


def test_a_patient_named_like_an_uncertainty_map_is_refused(tiny_model: Path, patients: Path, tmp_path: Path) -> None:
    """pt_1_uncertainty's dose would overwrite pt_1's uncertainty map, and --continue would take one for the other."""
    source = shutil.copytree(patients, tmp_path / "in")
    (source / "pt_2").rename(source / "pt_1_Uncertainty")
    result = predict("-i", str(source), "-o", str(tmp_path / "out"), "-m", str(tiny_model), "--no-tta")
    assert result.exit_code == 1 and "may not end in '_uncertainty'" in " ".join(result.output.split()), result.output
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["pt_1.csv"]


def test_wrong_grid_is_refused_with_a_reason(tiny_model: Path, tmp_path: Path) -> None:
    nifti.write_patient(make_phantom((32, 32, 32)), tmp_path / "small" / "pt_s")
    result = predict("-i", str(tmp_path / "small"), "-o", str(tmp_path / "out"), "-m", str(tiny_model))
    assert result.exit_code == 1 and "differs from the 128x128x128 grid" in result.output


def test_corrupt_weights_and_pickles_are_refused(tiny_model: Path, patients: Path, tmp_path: Path) -> None:
    broken = shutil.copytree(tiny_model, tmp_path / "broken")
    (broken / "model.safetensors").write_bytes(b"\x00" * 100)
    result = predict("-i", str(patients), "-o", str(tmp_path / "out"), "-m", str(broken))
    assert result.exit_code == 2 and "cannot load weights" in result.output
    pickled = tmp_path / "model.pt"
    torch.save({"weights": torch.zeros(1)}, pickled)
    result = predict("-i", str(patients), "-o", str(tmp_path / "out"), "-m", str(pickled))
    assert result.exit_code == 2 and "pickled checkpoints" in result.output
    result = predict("-i", str(patients), "-o", str(tmp_path / "out"), "-m", "no-such-model")
    assert result.exit_code == 2 and "no model 'no-such-model'" in result.output
    assert not (tmp_path / "out").exists()
    with pytest.raises(ModelError, match="not a model folder"):
        load_predictor(tmp_path, device=torch.device("cpu"))


def test_demo_writes_dose_plot_and_table(tiny_model: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["demo", "-o", str(tmp_path), "-m", str(tiny_model)])
    assert result.exit_code == 0, result.output
    for name in ("phantom_dose.nii.gz", "phantom_dvh.png", "phantom_metrics.csv"):
        assert (tmp_path / name).is_file() and name in result.output
    assert "dose score" in result.output


def test_the_default_shipped_model_runs_the_demo(tmp_path: Path) -> None:
    from dosepred.models import DEFAULT_MODEL, shipped_models

    assert DEFAULT_MODEL in shipped_models()
    result = runner.invoke(app, ["demo", "-o", str(tmp_path), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    dose, _ = nifti.read_volume(tmp_path / "phantom_dose.nii.gz")
    assert 40 < dose.max() < 90  # a trained model, not noise


def test_uncertainty_comes_from_a_second_output_channel(tiny_model: Path, two_output_model: Path) -> None:
    patient = make_phantom((32, 32, 32))
    single = load_predictor(tiny_model, device=torch.device("cpu"))
    assert single.predict_with_uncertainty(patient, tta=False)[1] is None
    double = load_predictor(two_output_model, device=torch.device("cpu"))
    dose, uncertainty = double.predict_with_uncertainty(patient, tta=True)
    assert uncertainty.shape == dose.shape and not uncertainty[~patient.possible_dose_mask].any()


def test_a_failing_patient_of_an_archive_is_named_inside_it(tiny_model: Path, patients: Path, tmp_path: Path) -> None:
    """An archive's patients lie in a temporary folder that is gone when the message is read: not named there."""
    import zipfile

    with zipfile.ZipFile(tmp_path / "batch.zip", "w") as archive:
        for path in sorted((patients / "pt_2").iterdir()):
            if path.name != "ct.csv":
                archive.write(path, f"pt_2/{path.name}")
    result = predict("-i", str(tmp_path / "batch.zip"), "-o", str(tmp_path / "out"), "-m", str(tiny_model))
    output = " ".join(result.output.split())
    assert result.exit_code == 1 and "pt_2: missing ct.csv" in output and "dosepred-" not in output, output
