"""Distributed data-parallel training on PyTorch DDP, launched by torchrun
(`torchrun --nproc-per-node N -m imgclass train ...`, or `imgclass train --devices N`).

NCCL on GPUs, gloo on CPU. Every rank sees its own shard of each global batch, gradients are
averaged by DDP, epoch metrics are summed across ranks, validation logits are gathered (so every task
scores them as one process would: mAP is not a sum of per-shard parts), and only rank 0 writes files and
shows progress. Nothing here is hand-made communication beyond torch.distributed's collectives.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def broadcast(self, value):
        """rank 0's value, on every rank."""
        if not self.active:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def sum(self, *values: float) -> list[float]:
        if not self.active:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64)
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t)
        return t.cpu().tolist()

    def gather_strided(self, part: torch.Tensor, n: int) -> torch.Tensor:
        """The n rows that the ranks hold strided (rank r holds rows r, r + world, ...), on every rank in their
        original order. Shards differ by at most one row: each is padded to the longest for all_gather."""
        if not self.active:
            return part
        longest = -(-n // self.world)
        on = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        padded = torch.zeros((longest, *part.shape[1:]), dtype=part.dtype, device=on)
        padded[:len(part)] = part.to(on)
        shards = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(shards, padded)
        rows = torch.empty((n, *part.shape[1:]), dtype=part.dtype)
        for rank, shard in enumerate(shards):
            mine = len(range(rank, n, self.world))
            rows[rank::self.world] = shard[:mine].cpu()
        return rows


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: str) -> Dist:
    """Join the process group torchrun set up in the environment (a no-op for one process)."""
    if not launched_by_torchrun():
        return Dist()
    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Dist(rank, world, local)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


FRESH_START_ENV = "IMGCLASS_FRESH_START"


def fresh_start(resumed: bool, checkpoint: Path) -> bool:
    """Whether this process starts training from the beginning: a new run, or the workers `--devices`
    launches on a prepared folder that has no checkpoint yet. A user's --resume without a checkpoint
    is neither (and an error)."""
    return not resumed or (os.environ.get(FRESH_START_ENV) == "1" and not checkpoint.is_file())
