"""Devices and the fast path: bf16 autocast + channels-last 3D where the hardware computes bf16 natively."""

from __future__ import annotations

import os
import platform
from functools import cache

import torch


class DeviceError(ValueError):
    """A device that was asked for but is not there."""


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` is CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"device {name!r} asked for, but no CUDA device is available")
    try:
        return torch.device(name)
    except RuntimeError:
        raise DeviceError(f"unknown device {name!r}; use cpu, cuda or auto") from None


@cache
def cpu_has_bf16() -> bool:
    """True on CPUs with native bf16 arithmetic (AMX-BF16 or AVX512-BF16), where oneDNN runs bf16 convs fast;
    elsewhere bf16 is emulated and slower than fp32."""
    try:
        with open("/proc/cpuinfo") as handle:
            flags = next((line for line in handle if line.startswith("flags")), "").split()
    except OSError:
        return False
    return torch.backends.mkldnn.is_available() and bool({"amx_bf16", "avx512_bf16"} & set(flags))


def fast_path(device: torch.device) -> bool:
    """Whether bf16 autocast and channels-last pay on ``device``: every CUDA GPU with bf16, CPUs with bf16."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_bf16()


def set_threads(threads: int | None) -> int:
    """Use ``threads`` CPU threads (None: ``OMP_NUM_THREADS`` if set, else every core this process may run on);
    returns the number in use."""
    torch.set_num_threads(int(threads) if threads else default_threads())
    return torch.get_num_threads()


def default_threads() -> int:
    """``OMP_NUM_THREADS`` if it is a positive number, else the cores this process may run on (its affinity: a
    container or ``taskset`` may allow fewer than the machine has)."""
    try:
        requested = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        requested = 0
    if requested > 0:
        return requested
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return len(allowed) if allowed else os.cpu_count() or 1


def hardware(device: torch.device) -> str:
    """A short description of the device, for model cards and lineage."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.machine()} × {torch.get_num_threads()} threads" + (" (bf16)" if cpu_has_bf16() else "")
