from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from dosepred.io.files import atomic_file, atomic_folder


@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_outputs_get_the_mode_the_umask_gives(umask: int, tmp_path: Path) -> None:
    with atomic_file(tmp_path / "pt_1.nii.gz") as tmp:
        assert tmp.name.startswith(".pt_1.nii.gz.") and tmp.name.endswith(".nii.gz")  # writers go by extensions
        tmp.write_bytes(b"dose")
    with atomic_folder(tmp_path / "pt_1") as tmp:
        (tmp / "ct.csv").write_text(",data\n")
    assert mode(tmp_path / "pt_1.nii.gz") == 0o666 & ~umask
    assert mode(tmp_path / "pt_1") == 0o777 & ~umask
    assert mode(tmp_path / "pt_1" / "ct.csv") == 0o666 & ~umask


def test_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), atomic_file(tmp_path / "a.csv") as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer failed")
    with pytest.raises(RuntimeError), atomic_folder(tmp_path / "b") as tmp:
        (tmp / "x").write_text("half")
        raise RuntimeError("writer failed")
    assert list(tmp_path.iterdir()) == []


def test_a_folder_is_replaced_whole(tmp_path: Path) -> None:
    (tmp_path / "pt_1").mkdir()
    (tmp_path / "pt_1" / "old.csv").write_text("old")
    with atomic_folder(tmp_path / "pt_1") as tmp:
        (tmp / "new.csv").write_text("new")
    assert [p.name for p in (tmp_path / "pt_1").iterdir()] == ["new.csv"]


def test_a_run_stopped_while_removing_the_old_folder_leaves_the_new_one(tmp_path: Path, monkeypatch) -> None:
    import shutil

    from dosepred.io.files import remove_stale

    (tmp_path / "pt_1").mkdir()
    (tmp_path / "pt_1" / "old.csv").write_text("old")
    removing = shutil.rmtree

    def stopped(path, *args, **kwargs) -> None:  # noqa: ANN001 - the old folder's removal is where the run stops
        if Path(path).exists() and (Path(path) / "old.csv").exists():
            raise KeyboardInterrupt
        removing(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", stopped)
    with pytest.raises(KeyboardInterrupt), atomic_folder(tmp_path / "pt_1") as tmp:
        (tmp / "new.csv").write_text("new")
    assert [p.name for p in (tmp_path / "pt_1").iterdir()] == ["new.csv"]
    monkeypatch.setattr(shutil, "rmtree", removing)
    monkeypatch.setattr("os.getpid", lambda: 2**22 + 1)  # a later run, by another process,
    monkeypatch.setattr("dosepred.io.files._running", lambda pid: False)  # once the stopped one has ended
    remove_stale(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["pt_1"]


def test_remove_outputs_takes_only_what_it_names(tmp_path: Path) -> None:
    from dosepred.io.files import remove_outputs

    (tmp_path / "best").mkdir()
    (tmp_path / "best" / "model.safetensors").write_text("x")
    (tmp_path / "metrics.csv").write_text("x")
    (tmp_path / "notes.txt").write_text("the user's")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "checkpoints").symlink_to(tmp_path / "elsewhere")  # a link goes, not what it points to
    remove_outputs(tmp_path, ("best", "metrics.csv", "checkpoints", "curves.png"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "notes.txt"]
