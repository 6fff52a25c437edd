"""torchrun / DistributedDataParallel plumbing, kept out of the training loop.

`torchrun --nproc_per_node=K cli.py train ...` starts K processes with RANK / WORLD_SIZE /
LOCAL_RANK in their environment; without them (a plain `python cli.py train`) every helper here
is a no-op, so the single-process path is the same code with K = 1.

Contract (README, "Several GPUs"):
- one process group per process, for its whole life: `compare` trains several runs in one
  process, and re-creating the group between them let a late rank join stale rendezvous keys and
  hang; the group is destroyed once, at exit;
- the backend follows the *requested* device (NCCL for CUDA, gloo for CPU), so `--device cpu` on a
  GPU machine runs gloo; each GPU process owns the GPU of its LOCAL_RANK;
- each rank reads its own shard of the shuffled train set (all ranks share the order seed, so the
  shards partition the data); augmentation is a function of (seed, epoch, image index), so an
  image is augmented the same whichever rank draws it;
- the global batch is K × --batch-size; the learning rate is not rescaled unless --scale-lr;
- train loss/accuracy and the stop/divergence decisions are all-reduced, the test set is split
  across ranks and gathered, BatchNorm buffers are broadcast from rank 0 before every evaluation,
  and only rank 0 writes the run directory or prints.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from common.errors import UserError
from training.device import auto_device


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

    def broadcast_buffers(self, model: nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) on every rank. DDP is built with
        `broadcast_buffers=False` (training/components.py), so during an epoch each rank's statistics
        follow its own batches; evaluation and the end-of-run digest call this first. A model
        without buffers costs nothing."""
        if not self.enabled:
            return
        for buffer in model.buffers():
            dist.broadcast(buffer.data, src=0)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def _device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")


_CONTEXT: DistContext | None = None


def wants_cuda(requested: str) -> bool:
    """Does `--device` ask for a GPU? `auto` does exactly when CUDA is usable."""
    return requested.startswith("cuda") or (requested == "auto" and torch.cuda.is_available())


def backend_for(requested: str) -> str:
    return "nccl" if wants_cuda(requested) else "gloo"


def context(requested_device: str = "auto") -> DistContext:
    """This process's place in the torchrun job (K = 1 without torchrun), joining the process
    group on the first call; later calls return the same context."""
    global _CONTEXT
    if _CONTEXT is not None:
        return _CONTEXT
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        _CONTEXT = DistContext()
        return _CONTEXT
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_available():
        raise UserError("this torch build has no torch.distributed; run without torchrun")
    if requested_device.startswith("cuda:"):
        raise UserError(f"--device {requested_device} names one GPU, but under torchrun each process uses the GPU of "
                        "its LOCAL_RANK; pass --device cuda (or auto), and CUDA_VISIBLE_DEVICES to choose the GPUs")
    backend = backend_for(requested_device)
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise UserError("--device cuda under torchrun needs one visible GPU per process; none is visible")
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"torchrun started {os.environ.get('LOCAL_WORLD_SIZE', '?')} processes on this node "
                            f"but only {torch.cuda.device_count()} GPUs are visible; lower --nproc_per_node")
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        # 30 min covers a CPU test pass on a slow rank while the others wait in a collective.
        dist.init_process_group(backend, timeout=timedelta(minutes=30))
        atexit.register(shutdown)
    _CONTEXT = DistContext(rank, world, local_rank, backend)
    return _CONTEXT


def device_for(ctx: DistContext, requested: str) -> str:
    """Under torchrun on GPUs each process owns the GPU of its LOCAL_RANK. `auto` on gloo means
    CUDA was unusable when the backend was chosen; `auto_device` then tells a CPU-only box (train
    on the CPU) from one whose GPU this torch cannot use (the single-process run's error, on every
    rank, rather than K ranks silently training on the CPU)."""
    if ctx.enabled and ctx.backend == "nccl":
        return f"cuda:{ctx.local_rank}"
    if ctx.enabled and ctx.backend == "gloo" and requested == "auto":
        return auto_device()
    return requested


def shutdown() -> None:
    """Leave the process group (once, at exit)."""
    global _CONTEXT
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _CONTEXT = None
