"""Atomic writes: an output file or folder either appears whole or not at all."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


def _create_beside(path: Path, suffix: str, create: Callable[[Path], None]) -> Path:
    """A new hidden sibling of ``path``, made by ``create`` (which must fail if the name exists).

    Unlike mkstemp/mkdtemp (always 0600/0700), the file or folder gets the mode the umask gives a
    normal one, so outputs are as shareable as any other file the user writes.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):  # random names: a clash is already unlikely once
        # The pid in the name lets a later run remove what a killed process left (remove_stale).
        candidate = path.parent / f".{path.name}.{os.getpid()}-{secrets.token_hex(6)}{suffix}"
        with contextlib.suppress(FileExistsError):
            create(candidate)
            return candidate
    raise FileExistsError(f"{path.parent}: no free temporary name beside {path.name}")


def _new_file(path: Path) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it is renamed onto ``path`` only if the block succeeds.

    The temporary name ends with the same extensions (``.nii.gz``), for writers that go by them.
    """
    path = Path(path)
    tmp = _create_beside(path, ".tmp" + "".join(path.suffixes), _new_file)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; it replaces ``path`` only if the block succeeds.

    An old folder is renamed aside and removed only once the new one is in place: a run killed while removing it
    leaves the new folder, not neither (the aside copy is a temporary that ``remove_stale`` clears).
    """
    path = Path(path)
    tmp = _create_beside(path, ".tmp", lambda candidate: candidate.mkdir(0o777))
    try:
        yield tmp
        if not (path.is_dir() and not path.is_symlink()):
            os.replace(tmp, path)
            return
        aside = _create_beside(path, ".tmp-old", lambda candidate: candidate.mkdir(0o777))
        os.replace(path, aside)
        try:
            os.replace(tmp, path)
        except OSError:
            os.replace(aside, path)
            raise
        shutil.rmtree(aside, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


#: Exactly the names of the temporaries above and of ``temporary_folder``: the owner's pid, then the random part
#: (12 hex digits, or tempfile's 8 characters), so that no file of the user's is ever taken for one.
_TEMPORARY = re.compile(r"\..+\.(\d+)-[0-9a-f]{12}\.tmp.*|dosepred-(\d+)-[a-z0-9_]{8}")


def remove_outputs(folder: Path, names: tuple[str, ...]) -> None:
    """Remove the files and folders a command writes in ``folder`` (and nothing else there), so that a run that
    replaces another keeps none of its files."""
    for name in names:
        entry = folder / name
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def remove_stale(folder: str | Path) -> list[Path]:
    """Remove the temporary files and folders that processes no longer running (killed by SIGKILL, a power
    cut) left in ``folder``; returns what was removed. Other processes' live temporaries are kept."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in Path(folder).iterdir():
            match = _TEMPORARY.fullmatch(entry.name)
            pid = int(match.group(1) or match.group(2)) if match else os.getpid()
            if pid != os.getpid() and not _running(pid):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                removed.append(entry)
    return removed


@contextlib.contextmanager
def temporary_folder() -> Iterator[Path]:
    """A private folder in the system's temporary space, removed afterwards; one that a killed earlier run
    left behind is removed first."""
    remove_stale(tempfile.gettempdir())
    with tempfile.TemporaryDirectory(prefix=f"dosepred-{os.getpid()}-") as tmp:
        yield Path(tmp)
