"""Data-parallel training across processes (torch DDP), as `torchrun` launches it.

A `World` says which rank this process is among how many. With one rank (the default)
nothing here does anything, so single-process training is exactly what it was. With
several, `torchrun --standalone --nproc_per_node N` sets RANK / WORLD_SIZE / LOCAL_RANK and
each rank: joins the process group (NCCL on CUDA, one GPU per rank; gloo on the CPU), trains
its own shard of every epoch with its own noise, and averages gradients with DDP.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's place in a data-parallel run (rank 0 of 1 when not distributed)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, renders, logs and reports progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @classmethod
    def from_env(cls) -> World:
        """The world torchrun describes in the environment (one rank when it is absent)."""
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        return cls(rank, size, int(os.environ.get("LOCAL_RANK", str(rank))))

    def device(self, name: str) -> str:
        """The device of this rank: its own GPU (cuda:LOCAL_RANK) when training on CUDA."""
        if not self.distributed:
            return name
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        return f"cuda:{self.local_rank}" if name == "cuda" else name

    def join(self, device: torch.device) -> None:
        """Join the process group: NCCL for CUDA ranks, gloo on the CPU."""
        if self.distributed and not dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    def leave(self) -> None:
        """Barrier, then destroy the group, so a normal run never ends in a C++ abort."""
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()

    def any(self, flag: bool) -> bool:
        """True on every rank when it is True on one (a stop must be taken together, or
        the other ranks would wait forever in their next collective)."""
        if not self.distributed:
            return flag
        t = torch.tensor([1.0 if flag else 0.0],
                         device="cuda" if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def gather(self, obj: object) -> list[object]:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        out: list[object] = [None] * self.size
        dist.all_gather_object(out, obj)
        return out


def shard(order: torch.Tensor, batch_size: int, world: World) -> list[torch.Tensor]:
    """This rank's minibatches of one epoch's permutation: step i of rank r takes slice
    (i * size + r) of `batch_size` rows, so the ranks' batches are disjoint and together are
    what one process with a batch of size x batch_size would take. Every rank gets the
    same number of steps (a rank with one more would wait forever in its collective)."""
    n = order.shape[0]
    bs = min(batch_size, max(1, n // world.size))
    steps = max(1, n // (bs * world.size))
    return [order[(i * world.size + world.rank) * bs:(i * world.size + world.rank + 1) * bs]
            for i in range(steps)]


SINGLE = World()  # one process: what every call gets unless torchrun says otherwise
