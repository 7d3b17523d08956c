"""torchrun / DDP helpers: one process per device, rank 0 logs and saves."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Topology:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Topology:
    """Join the process group torchrun describes in the environment (NCCL on GPUs, gloo on CPUs)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Topology()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return Topology(rank=dist.get_rank(), world_size=world_size, local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def leave(topology: Topology) -> None:
    """Leave the process group together: every rank waits for the others, then destroys its part.

    Call it once nothing holds the group any more (a DDP wrapper keeps it alive): a group torn down by the
    interpreter at exit can abort the process after the work is done.
    """
    if topology.world_size > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier(topology: Topology) -> None:
    if topology.world_size > 1:
        dist.barrier()


def any_rank(flag: bool, topology: Topology, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any (so all ranks leave a loop together)."""
    if topology.world_size == 1:
        return flag
    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())
