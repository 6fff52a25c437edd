"""torchrun / DistributedDataParallel plumbing, kept out of the training loop.

`torchrun --nproc_per_node=K cli.py train ...` starts K processes with RANK / WORLD_SIZE /
LOCAL_RANK in their environment; without them (a plain `python cli.py train`) every helper here
is a no-op, so the single-process path is the same code with K = 1.

Contract (README, "Several GPUs"):
- each rank reads its own shard of the shuffled train set (FFCV `distributed=True`, which wraps
  torch's DistributedSampler: all ranks share the order seed, so the shards partition the data);
- augmentation is a function of (seed, epoch, image index), so an image gets the same crop, flip,
  rotation and cutout whichever rank draws it, and results do not depend on K through it;
- the global batch is K × --batch-size; the learning rate is not rescaled;
- train loss/accuracy and the stop/divergence decisions are all-reduced, the test set is split
  across ranks and gathered, and only rank 0 writes the run directory or prints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from common.errors import UserError


@dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    # ---- collectives (no-ops when K = 1) ------------------------------------------------------
    def all_sum(self, values: list[float]) -> list[float]:
        if not self.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self._device())
        dist.all_reduce(t)
        return t.tolist()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's value on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def _device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")


def from_environment() -> DistContext:
    """Join the process group torchrun describes in the environment; K = 1 without torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return DistContext()
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_available():
        raise UserError("this torch build has no torch.distributed; run without torchrun")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"torchrun started {os.environ.get('LOCAL_WORLD_SIZE', '?')} processes on this node "
                            f"but only {torch.cuda.device_count()} GPUs are visible; lower --nproc_per_node")
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        # 30 min covers a CPU test pass on a slow rank while the others wait in a collective.
        dist.init_process_group(backend, timeout=timedelta(minutes=30))
    return DistContext(rank, world, local_rank, backend)


def device_for(ctx: DistContext, requested: str) -> str:
    """Under torchrun on GPUs each process owns the GPU of its LOCAL_RANK."""
    if ctx.enabled and ctx.backend == "nccl" and requested in ("auto", "cuda"):
        return f"cuda:{ctx.local_rank}"
    if ctx.enabled and ctx.backend == "gloo" and requested.startswith("cuda"):
        raise UserError("--device cuda under torchrun needs one visible GPU per process; none is visible")
    return requested


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
