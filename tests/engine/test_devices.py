"""The default number of CPU threads: what the environment and the process's affinity allow."""

from __future__ import annotations

import os

import pytest

from dosepred import devices


@pytest.mark.parametrize("variable, allowed, expected", [
    ("3", {0, 1}, 3),  # OMP_NUM_THREADS is what the user asked for
    (None, {0}, 1),  # taskset -c 0, or a one-core container on a larger machine
    ("", {0, 1, 2}, 3),
    ("zero", {0, 1}, 2),  # not a number: ignored
    ("0", {0, 1}, 2),
])
def test_default_threads_follow_omp_num_threads_then_the_affinity(monkeypatch: pytest.MonkeyPatch, variable: str | None,
                                                                 allowed: set[int], expected: int) -> None:
    if variable is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", variable)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: allowed, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert devices.default_threads() == expected
