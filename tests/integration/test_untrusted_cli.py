"""Issue 15 at the commands: nothing lost, nothing left behind, a message instead of a traceback."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from dosepred.io import pack
from dosepred.io.files import atomic_file, remove_stale
from dosepred.io.phantom import make_phantom
from dosepred.models import MODELS_DIR, ModelError
from dosepred.cli import app

runner = CliRunner()

HOLD_A_TEMPORARY_FOLDER = """
import signal, sys, time
from dosepred.cli.common import stop
from dosepred.io.files import temporary_folder
if sys.argv[1] == "handled":
    signal.signal(signal.SIGTERM, stop)
with temporary_folder() as folder:
    print(folder, flush=True)
    time.sleep(60)
"""


def hold_temporary_folder(mode: str) -> tuple[subprocess.Popen, Path]:
    process = subprocess.Popen([sys.executable, "-c", HOLD_A_TEMPORARY_FOLDER, mode], stdout=subprocess.PIPE, text=True)
    folder = Path(process.stdout.readline().strip())
    assert folder.is_dir()
    return process, folder


def test_sigterm_removes_the_temporary_folder() -> None:
    process, folder = hold_temporary_folder("handled")
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 128 + signal.SIGTERM
    assert not folder.exists()


def test_what_a_killed_run_left_is_removed_by_the_next() -> None:
    process, folder = hold_temporary_folder("plain")
    process.kill()
    process.wait(timeout=30)
    assert folder.exists()  # SIGKILL cannot be caught ...
    assert folder in remove_stale(tempfile.gettempdir())  # ... so the next run clears it
    assert not folder.exists()


def test_remove_stale_keeps_live_temporaries(tmp_path: Path) -> None:
    with atomic_file(tmp_path / "out.csv") as live:
        live.write_text("x")
        dead = tmp_path / ".out.csv.999999999-0123456789ab.tmp.csv"  # a pid that cannot run
        dead.write_text("half")
        users = [tmp_path / ".backup.2024-01", tmp_path / ".notes.12-final.tmp", tmp_path / "dosepred-1-notes"]
        for folder in users:  # the user's own, named almost like a temporary: never touched
            (folder / "keep").mkdir(parents=True)
        assert remove_stale(tmp_path) == [dead]
        assert live.exists() and all((folder / "keep").is_dir() for folder in users)
    assert (tmp_path / "out.csv").read_text() == "x"


def test_a_pack_named_otherwise_than_its_id_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    patient = make_phantom()
    pack.write_patient(patient, tmp_path / "in" / "pt_other.dpk")
    result = runner.invoke(app, ["predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m",
                                 str(tiny_model), "--no-tta"])
    assert result.exit_code == 1 and "a pack file's name must be its patient id" in result.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_an_unforeseen_fault_in_one_patient_leaves_the_batch_going(tiny_model: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from dosepred.inference import batch

    for name in ("pt_bad", "pt_good"):
        pack.write_patient(dataclasses.replace(make_phantom(), id=name), tmp_path / "in" / f"{name}.dpk")
    read = batch.sources.read_patient

    def fault_in_one(path: Path, *args):  # noqa: ANN002, ANN202
        if path.name == "pt_bad.dpk":
            raise TypeError("int() argument must be ... not 'NoneType'")  # as pydicom's empty values gave
        return read(path, *args)

    monkeypatch.setattr(batch.sources, "read_patient", fault_in_one)
    result = runner.invoke(app, ["predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m",
                                 str(tiny_model), "--no-tta"])
    assert result.exit_code == 1 and "unexpected TypeError" in result.output, result.output
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["pt_good.csv"]


def test_two_inputs_of_one_name_do_not_share_an_output(tiny_model: Path, phantom_split: Path, tmp_path: Path) -> None:
    import shutil

    shutil.copytree(phantom_split / "pt_1", tmp_path / "in" / "pt_1")
    pack.write_patient(dataclasses.replace(make_phantom(), id="pt_1"), tmp_path / "in" / "pt_1.dpk")
    result = runner.invoke(app, ["predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m",
                                 str(tiny_model), "--no-tta"])
    assert result.exit_code == 1 and "another input has the name 'pt_1'" in " ".join(result.output.split())
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["pt_1.csv"]


def test_demo_into_a_file_is_a_message(tiny_model: Path, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    result = runner.invoke(app, ["demo", "-o", str(tmp_path / "file"), "-m", str(tiny_model)])
    assert result.exit_code == 2 and "is a file, not a folder" in result.output


@pytest.mark.skipif(not (MODELS_DIR / "lenas-teachers").is_dir(),
                    reason="the shipped teachers' ensemble is not in this checkout")
def test_demo_takes_an_ensemble_as_predict_does(tmp_path: Path) -> None:
    result = runner.invoke(app, ["demo", "-o", str(tmp_path), "-m", "lenas-teachers"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "phantom_dose.nii.gz").is_file()


def test_the_viewer_hands_its_process_to_streamlit(monkeypatch: pytest.MonkeyPatch) -> None:
    """`dosepred app` replaces itself by Streamlit, so a SIGTERM reaches the server and leaves nothing running."""
    pytest.importorskip("streamlit")
    calls = []
    monkeypatch.setattr(os, "execve", lambda path, argv, env: calls.append(argv))
    result = runner.invoke(app, ["app", "--port", "8599"])
    assert result.exit_code == 0, result.output
    assert calls and calls[0][1:4] == ["-m", "streamlit", "run"]


@pytest.mark.parametrize("damage", [
    lambda config: config.pop("data"),
    lambda config: config.update(inference=[]),
    lambda config: config.update(inference={"patch_size": "64"}),
    lambda config: config["data"].update(resolution="128"),
    lambda config: config["data"].update(resolution=2**20),  # would allocate terabytes
    lambda config: config["data"].update(beam_angles=["north"]),
    lambda config: config["network"].update(channels=[-4, 8]),
])
def test_a_damaged_model_config_is_a_message(tiny_model: Path, tmp_path: Path, damage) -> None:
    import json
    import shutil

    broken = tmp_path / "model"
    shutil.copytree(tiny_model, broken)
    config = json.loads((broken / "config.json").read_text())
    damage(config)
    (broken / "config.json").write_text(json.dumps(config))
    result = runner.invoke(app, ["demo", "-o", str(tmp_path / "demo"), "-m", str(broken)])
    assert result.exit_code == 2 and "invalid dose model config" in result.output, result.output


def test_a_config_naming_a_huge_network_is_refused_before_it_is_built(tiny_model: Path, tmp_path: Path,
                                                                       monkeypatch) -> None:
    """A config.json may describe any network: a 7 GiB one beside small weights once took that memory first."""
    import json
    import shutil

    from dosepred.inference.predictor import Predictor
    from dosepred.models import read_model

    broken = Path(shutil.copytree(tiny_model, tmp_path / "model"))
    config = json.loads((broken / "config.json").read_text())
    config["network"].update(channels=[*config["network"]["channels"], 2**16], strides=[*config["network"]["strides"], 2])
    (broken / "config.json").write_text(json.dumps(config))
    built = []
    monkeypatch.setattr(torch.nn.Module, "load_state_dict", lambda *args, **kwargs: built.append(1))
    with pytest.raises(ModelError, match="the weights do not fit the network"):
        Predictor.from_folder(read_model(broken), device=torch.device("cpu"))
    assert not built


@pytest.mark.parametrize("text", ["[" * 100_000, '{"kind": "dose", "seed": ' + "9" * 5000 + "}"])
def test_a_model_config_that_json_cannot_hold_is_a_message(tiny_model: Path, tmp_path: Path, text: str) -> None:
    import shutil

    broken = Path(shutil.copytree(tiny_model, tmp_path / "model"))
    (broken / "config.json").write_text(text)
    result = runner.invoke(app, ["demo", "-o", str(tmp_path / "demo"), "-m", str(broken)])
    assert result.exit_code == 2 and "cannot read model config" in result.output, result.output
    genotype = tmp_path / "genotype.json"
    genotype.write_text(text)
    result = runner.invoke(app, ["train", "-o", str(tmp_path / "run"), "--genotype", str(genotype)])
    assert result.exit_code == 2 and "not a genotype file" in result.output, result.output


def test_evaluate_a_pack_named_otherwise_than_its_id(tmp_path: Path) -> None:
    patient = make_phantom()
    pack.write_patient(patient, tmp_path / "ref" / "pt_other.dpk")
    (tmp_path / "pred").mkdir()
    (tmp_path / "pred" / "pt_other.csv").write_text(",data\n")
    result = runner.invoke(app, ["evaluate", str(tmp_path / "ref"), str(tmp_path / "pred")])
    assert result.exit_code == 2 and "a pack file's name must be its patient id" in result.output


def test_help_and_messages_keep_their_brackets(tmp_path: Path) -> None:
    result = runner.invoke(app, ["predict", "--help"])
    assert "[default: the best shipped model]" in " ".join(result.output.split())
    missing = tmp_path / "[folder]"
    result = runner.invoke(app, ["predict", "-i", str(missing), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and "[folder]" in result.output


@pytest.mark.parametrize("command", [
    ["phantom", "-o", "{file}/sub"],
    ["demo", "-o", "{file}/sub", "-m", "no-such-model"],
    ["prepare", "{tmp}/nowhere", "-o", "{file}/sub"],
    ["predict", "-i", "{tmp}/nowhere", "-o", "{file}/sub", "-m", "no-such-model"],
    ["report", "-i", "{tmp}/nowhere", "-o", "{file}/r.html", "-m", "no-such-model"],
    ["evaluate", "{tmp}/nowhere", "{tmp}/nowhere", "--json", "{file}/s.json"],
    ["detect", "eval", "{tmp}/nowhere", "--json", "{file}/s.json"],
    ["fewshot", "eval", "{tmp}/nowhere", "--json", "{file}/s.json"],
], ids=lambda command: "-".join(command[:2]))
def test_an_output_place_that_cannot_be_written_is_refused_before_any_work(command: list[str], tmp_path: Path) -> None:
    """The output is checked first: not after a batch of predictions, and not as a traceback."""
    (tmp_path / "file").write_text("")
    result = runner.invoke(app, [word.format(file=tmp_path / "file", tmp=tmp_path) for word in command])
    assert result.exit_code == 2 and "is a file, not a folder" in " ".join(result.output.split()), result.output


def test_a_broken_archive_is_named_in_the_message(tiny_model: Path, tmp_path: Path) -> None:
    """Not "upload: ...": on the command line the archive has a name, and the message gives it."""
    (tmp_path / "batch.zip").write_text("not a zip")
    result = runner.invoke(app, ["predict", "-i", str(tmp_path / "batch.zip"), "-o", str(tmp_path / "out"), "-m",
                                 str(tiny_model)])
    assert result.exit_code == 2 and f"{tmp_path / 'batch.zip'}: not a zip archive" in " ".join(result.output.split())


def test_an_output_folder_through_a_broken_link_is_refused_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "out").symlink_to(tmp_path / "gone")
    result = runner.invoke(app, ["phantom", "-o", str(tmp_path / "out" / "sub")])
    assert result.exit_code == 2 and "is a link to nothing" in " ".join(result.output.split()), result.output


def test_an_archive_member_at_fault_is_named_with_the_archive(tiny_model: Path, tmp_path: Path) -> None:
    import zipfile

    with zipfile.ZipFile(tmp_path / "bad.zip", "w") as archive:
        archive.writestr("pt_1/ct.csv", "0,1\n")
        archive.writestr("pt_1/CT.csv", "0,1\n")  # one file on a case-blind file system
    result = runner.invoke(app, ["predict", "-i", str(tmp_path / "bad.zip"), "-o", str(tmp_path / "out"), "-m",
                                 str(tiny_model)])
    output = " ".join(result.output.split())
    assert result.exit_code == 2 and "bad.zip: pt_1/CT.csv: names the same file as pt_1/ct.csv" in output, output
