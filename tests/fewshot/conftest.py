"""One torch thread for the few-shot tests: their tensors are tiny, and on a shared 2-core machine extra
threads only contend (a toy training test went from ~2 s to ~55 s with two threads beside other jobs)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
