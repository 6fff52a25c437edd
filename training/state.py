"""What a run knows between steps: epochs done, best so far, rows, wall time, a mid-epoch stop.

`TrainState.checkpoint(parts)` is everything `last.pt` holds and `TrainState.restore` puts it
back, so a run resumed from `last.pt` on the CPU produces the same metrics (timing columns aside)
and the same weights as one never interrupted: the loader's order and augmentation are pure
functions of (seed, epoch, index), and the checkpoint carries model, optimizer, scheduler, scaler
and RNG state.

What a checkpoint says about the machine that wrote it is not restored: the optimizer's
implementation flags (`fused`, `foreach`, …) and its buffers' memory layout follow the optimizer
this run built (a run may resume on another device or memory format), and under --scale-lr its
learning rate follows this run's number of processes (`world`, which every checkpoint records).
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from common.errors import UserError
from training.components import Parts


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what this machine has: a checkpoint from a box with more GPUs carries more CUDA
    generator states than there are devices here (torch's set_rng_state_all would fail), and one
    from a CPU run carries none. Nothing random runs on the GPU in this toolkit (augmentation is
    hashed on the host), so the CUDA states only matter for bit-identical resumes on the same box."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        for index, cuda_state in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)


@dataclass
class Partial:
    """Where a SIGINT/SIGTERM stopped an epoch: the resumed run skips `step` batches and carries
    on with these global running sums."""

    epoch: int  # 0-based epoch that was stopped
    step: int  # steps done in it
    loss_sum: float
    correct: float
    seen: float
    seconds: float  # train seconds spent in it before the stop
    world: int  # processes then: the shards (and so the skipped batches) depend on it
    lr: float | None = None  # the lr at the epoch's first step (metrics.csv's lr); None in older checkpoints


@dataclass
class TrainState:
    run_id: str
    epoch: int = 0  # epochs finished
    best_acc: float = -1.0  # on the split that chooses best.pt
    best_epoch: int = 0
    wall_before: float = 0.0  # wall seconds spent by earlier processes of this run
    rows: list[dict[str, Any]] = field(default_factory=list)
    partial: Partial | None = None
    started: float = field(default_factory=time.perf_counter)  # this process's start
    saved_world: int | None = None  # processes the restored checkpoint was written by (None: new run, older file)

    @property
    def wall_seconds(self) -> float:
        return self.wall_before + time.perf_counter() - self.started

    def record(self, row: dict[str, Any], score: float, latest: bool = False) -> bool:
        """Add an epoch's row; True when `score` beats the best so far, or always with `latest`
        (nothing decides: best.pt is then this epoch)."""
        self.rows.append(row)
        self.epoch = int(row["epoch"])
        if latest or score > self.best_acc:
            self.best_acc, self.best_epoch = score, self.epoch
            return True
        return False

    @property
    def best_row(self) -> dict[str, Any] | None:
        return self.rows[self.best_epoch - 1] if 0 < self.best_epoch <= len(self.rows) else None

    def checkpoint(self, parts: Parts, partial: Partial | None = None) -> dict[str, Any]:
        return {"run_id": self.run_id, "model": parts.bare.state_dict(), "optimizer": parts.optimizer.state_dict(),
                "scheduler": parts.scheduler.state_dict(), "scaler": parts.scaler.state_dict(), "rng": rng_state(),
                "world": parts.world, "epoch": self.epoch if partial is None else partial.epoch,
                "best_acc": self.best_acc, "best_epoch": self.best_epoch, "wall_seconds": self.wall_seconds,
                "partial": asdict(partial) if partial is not None else None,
                **({"ema": parts.ema.module.state_dict(), "ema_updates": int(parts.ema.n_averaged)}
                   if parts.ema is not None else {})}

    @classmethod
    def restore(cls, saved: dict[str, Any], parts: Parts, rows: list[dict[str, float]], where: str) -> TrainState:
        """Load a checkpoint into `parts`; `where` names the file in error messages. The optimizer
        keeps its own implementation flags and layout (`fit_optimizer_to_run`), and its lr is
        rescaled to this run's processes under --scale-lr (`rescale_lr`)."""
        flags = implementation_flags(parts.optimizer)
        try:
            parts.bare.load_state_dict(saved["model"])
            parts.optimizer.load_state_dict(saved["optimizer"])
            parts.scheduler.load_state_dict(saved["scheduler"])
            if parts.ema is not None:
                parts.ema.module.load_state_dict(saved["ema"])
                parts.ema.n_averaged.fill_(int(saved["ema_updates"]))
        except (RuntimeError, KeyError, ValueError):
            raise UserError(f"{where} does not match this run's config; the run directory mixes files from "
                            "different runs") from None
        fit_optimizer_to_run(parts.optimizer, flags)
        saved_world = int(saved["world"]) if "world" in saved else None
        if parts.scale_lr:
            rescale_lr(parts.optimizer, parts.scheduler, saved_world or parts.world, parts.world)
        restore_scaler(parts.scaler, saved.get("scaler") or {})
        set_rng_state(saved["rng"])
        epoch = int(saved["epoch"])
        partial = Partial(**saved["partial"]) if saved.get("partial") else None
        return cls(run_id=str(saved.get("run_id", "")), epoch=epoch, best_acc=float(saved["best_acc"]),
                   best_epoch=int(saved["best_epoch"]), wall_before=float(saved.get("wall_seconds", 0.0)),
                   rows=[r for r in rows if r["epoch"] <= epoch], partial=partial, saved_world=saved_world)


# Optimizer options that say how a step is computed on this machine, not what it computes. A
# checkpoint's values belong to the machine that wrote it: fused=None from a CPU run on a GPU whose
# GradScaler treats the (fused) optimizer as scaling-aware fails the step's assertion; fused=True
# from a GPU run on a CPU is a different kernel than the run chose.
IMPLEMENTATION_FLAGS = ("fused", "foreach", "differentiable", "capturable")


def implementation_flags(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """Each param group's implementation flags, as the freshly built optimizer has them."""
    return [{key: group[key] for key in IMPLEMENTATION_FLAGS if key in group} for group in optimizer.param_groups]


def fit_optimizer_to_run(optimizer: torch.optim.Optimizer, flags: list[dict[str, Any]]) -> None:
    """After `load_state_dict`: put back this run's implementation `flags`, and lay every state
    tensor shaped like its parameter (SGD's momentum buffer) out like the parameter.

    `load_state_dict` keeps the saved strides, so a run resumed in the other memory format
    (--no-channels-last after channels-last, or the reverse) would pair NCHW parameters with
    channels-last buffers. The fused SGD kernels assume equal strides for parameter, gradient and
    buffer: on CUDA the step raises; on the CPU it silently combines elements of different
    positions. `empty_like(p)` keeps p's strides, and `copy_` moves each element to its place."""
    for group, own in zip(optimizer.param_groups, flags, strict=True):
        group.update(own)
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for key, value in list(state.items()):
                if (isinstance(value, torch.Tensor) and value.shape == param.shape
                        and value.stride() != param.stride()):
                    state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def rescale_lr(optimizer: torch.optim.Optimizer, scheduler: Any, saved_world: int, world: int) -> None:
    """--scale-lr trains at K × --lr: a checkpoint written by K_old = `saved_world` processes and
    resumed by K_new = `world` carries lrs scaled for K_old. Every stored lr is multiplied by
    K_new / K_old: each param group's current lr (which the plateau schedule may have lowered) and
    `initial_lr`, and the scheduler's `base_lrs` (what LambdaLR's one-cycle factor multiplies) and
    last lrs."""
    if saved_world == world:
        return
    for group in optimizer.param_groups:
        for key in ("lr", "initial_lr"):
            if key in group:
                group[key] = group[key] * world / saved_world
    for name in ("base_lrs", "_last_lr"):
        values = getattr(scheduler, name, None)
        if isinstance(values, list):
            setattr(scheduler, name, [v * world / saved_world for v in values])


def restore_scaler(scaler: torch.amp.GradScaler, saved: dict[str, Any]) -> None:
    """A run moved between precisions keeps going: a bf16 or CPU checkpoint holds an empty scaler
    state, which an enabled fp16 scaler refuses to load (it then starts from its defaults, as a new
    run would); a disabled scaler ignores whatever was saved."""
    if scaler.is_enabled() and saved:
        scaler.load_state_dict(saved)
