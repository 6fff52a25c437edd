"""The pieces a run trains with, built once: model, step model, optimizer, scheduler, scaler,
loss, loaders.

`bare` is the model itself (weights, checkpoints, digests); `step` is what a training step calls:
the same module wrapped in DistributedDataParallel under torchrun and/or torch.compile'd.
Evaluation uses `bare` under torchrun (each rank scores its own test shard; DDP's forward would
expect a matching backward) and `step` otherwise.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, overload

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from common.config import OptimConfig, TrainConfig
from models import build_model
from training.device import DeviceSetup
from training.distributed import DistContext
from training.schedule import Scheduler, build_scheduler, per_step

if TYPE_CHECKING:
    from pipeline.loaders import SplitLoader

EVAL_BATCH = 500
DEFAULT_VAL = 5000  # --val when not given (a tenth of the images when --subset leaves fewer)
# FFCV's threads and the model's intra-op threads share the cores on CPU; on CUDA the loader's
# threads only decode and augment, and more than this has not been seen to help (FFCV's own
# examples use 8-12 per GPU).
MAX_CUDA_WORKERS = 12


@dataclass
class Parts:
    bare: nn.Module
    step: nn.Module
    optimizer: torch.optim.SGD
    scheduler: Scheduler
    scaler: torch.amp.GradScaler
    criterion: nn.Module
    distributed: bool
    classes: int  # the model's output classes (the divergence guard's chance level is ln of it)
    ema: AveragedModel | None = None  # --ema: the averaged weights (`ema.module`), what evaluation scores
    world: int = 1  # processes training together (torchrun's K); checkpoints record it
    scale_lr: bool = False  # --scale-lr: the optimizer's lr is K × --lr, so a resume under another K rescales it

    def update_ema(self) -> None:
        if self.ema is not None:
            self.ema.update_parameters(self.bare)

    @property
    def eval_model(self) -> nn.Module:
        """What evaluation scores: the averaged weights under --ema, else the model (`bare` under
        torchrun, where DDP's forward would expect a matching backward)."""
        if self.ema is not None:
            return self.ema.module
        return self.bare if self.distributed else self.step

    @property
    def per_step(self) -> bool:
        """The schedule advances after every optimizer step (onecycle), not once per epoch."""
        return per_step(self.scheduler)

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])


def build_optimizer(model: nn.Module, optim: OptimConfig, device: torch.device, world: int = 1) -> torch.optim.SGD:
    """SGD (Nesterov with --nesterov); fused on CUDA (one kernel for all parameters instead of a
    loop of launches). Without --decay-all, weight decay applies to conv and linear weights only
    (parameters with more than one dimension), not to norm scales/shifts and biases.
    `--scale-lr` multiplies the lr by the number of processes (Goyal et al.'s linear rule)."""
    lr = optim.lr * (world if optim.scale_lr else 1)
    params: Any = model.parameters()
    if not optim.decay_all:
        named = list(model.parameters())
        params = [{"params": [p for p in named if p.ndim > 1]},
                  {"params": [p for p in named if p.ndim <= 1], "weight_decay": 0.0}]
    return torch.optim.SGD(params, lr=lr, momentum=optim.momentum, nesterov=optim.nesterov,
                           weight_decay=optim.weight_decay, fused=device.type == "cuda" or None)


def warmup_factor(optim: OptimConfig, global_step: int) -> float:
    """Linear warm-up: step t of the run trains at lr × (t + 1) / N for t < N. Applied around each
    optimizer step (training/epoch.py) rather than written into the optimizer, so the plateau
    scheduler and the checkpoint only ever see the base lr, and resume needs no extra state."""
    n = optim.warmup_steps
    return 1.0 if n <= 0 or global_step >= n else (global_step + 1) / n


def build_parts(cfg: TrainConfig, setup: DeviceSetup, ctx: DistContext, steps_per_epoch: int) -> Parts:
    model = build_model(cfg.model).to(setup.device)
    if setup.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg.optim, setup.device, ctx.world)
    step: nn.Module = model
    if ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel

        # device_ids only on CUDA: DDP on CPU (gloo) takes None, and [None] is an error.
        ids = [setup.device.index] if setup.device.type == "cuda" else None
        # No buffer broadcast before every forward (one collective per step): a training step reads
        # no running statistic (BatchNorm normalises by the batch's in train mode), and rank 0's
        # statistics, the ones its checkpoints hold, are the same either way, since the broadcast
        # only ever overwrote the other ranks'. Their drift is undone by `DistContext.broadcast_buffers`
        # before each evaluation and before the end-of-run digest. The initial buffers are
        # constants, or the same checkpoint on every rank.
        step = DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)
    if cfg.run.compile:
        step = torch.compile(step)  # type: ignore[assignment]  # compile returns a callable module
    return Parts(bare=model, step=step, optimizer=optimizer, scheduler=build_scheduler(optimizer, cfg.optim, steps_per_epoch),
                 scaler=torch.amp.GradScaler(setup.device.type, enabled=setup.use_scaler),
                 criterion=nn.CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing),
                 distributed=ctx.enabled, classes=cfg.model.num_classes, ema=build_ema(model, cfg.optim.ema),
                 world=ctx.world, scale_lr=cfg.optim.scale_lr)


@overload
def ema_decay_at(decay: float, updates: float) -> float: ...
@overload
def ema_decay_at(decay: float, updates: torch.Tensor) -> torch.Tensor: ...
def ema_decay_at(decay: float, updates: float | torch.Tensor) -> float | torch.Tensor:
    """The decay of the EMA update after `updates` earlier ones: min(decay, (1 + n) / (10 + n)),
    the warm-up of TensorFlow's ExponentialMovingAverage with num_updates. A constant decay d
    leaves weight d^N on the first copy (nearly the initial weights) after N updates, a share a
    short run never forgets (docs/BENCHMARKS.md, the H200 sweep); warmed up, the average tracks
    the early weights closely and forgets them. `updates` may be a tensor (the count AveragedModel
    keeps on the model's device): the result is then one too, computed without a host sync."""
    warm = (1 + updates) / (10 + updates)
    return warm.clamp(max=decay) if isinstance(warm, torch.Tensor) else min(decay, warm)


def _warmup_ema(decay: float) -> Any:
    """AveragedModel's multi_avg_fn for the EMA with warm-up (torch's get_ema_multi_avg_fn has a
    constant decay). The decay is computed from the update count where that count lives (a CUDA
    tensor on a GPU), so an update never waits for the device; one fused lerp per update."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], updates: torch.Tensor) -> None:
        if torch.is_floating_point(averaged[0]):
            weight = 1 - ema_decay_at(decay, updates.to(averaged[0].dtype))
            torch._foreach_lerp_(averaged, current, [weight] * len(averaged))
        else:  # integer buffers (BatchNorm's num_batches_tracked) take the current value
            for avg, cur in zip(averaged, current, strict=True):
                avg.copy_(cur)

    return update


def build_ema(model: nn.Module, decay: float) -> AveragedModel | None:
    """torch's AveragedModel with an EMA rule over parameters and buffers (the norms' running
    statistics follow the weights they belong to), its decay warmed up by `ema_decay_at`; None
    when --ema is 0."""
    if decay <= 0:
        return None
    return AveragedModel(model, multi_avg_fn=_warmup_ema(decay), use_buffers=True)


def loader_workers(requested: int | None, device: torch.device, ctx: DistContext) -> tuple[int, str]:
    """Loader threads and a note for the run's header. More than the cores this process may use is
    clamped (numba refuses to start more threads than it was sized for), also on a resume of a run
    recorded on a bigger machine."""
    from pipeline.loaders import available_cpus

    if requested is not None:
        usable = available_cpus()
        if requested > usable:
            return usable, f"--workers {requested} clamped to the {usable} usable cores"
        return requested, ""
    share = available_cpus() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", ctx.world)))
    if device.type == "cuda":
        share = min(share, MAX_CUDA_WORKERS)
    return max(1, share), ""


@dataclass
class Holdout:
    """The training images a run trains on and the validation images it decides on."""

    train: np.ndarray | None  # None: the first --subset images (or all), no validation split
    val: np.ndarray | None


def holdout(cfg: TrainConfig, recorded: np.ndarray | None = None) -> Holdout:
    """--val images held out of the first --subset (or all) training images, class-stratified from
    --seed. A resumed run passes the split its run directory `recorded`, which must still fit."""
    if cfg.data.val == 0:
        return Holdout(None, None)
    from pipeline.manifest import read_arrays, read_manifest
    from pipeline.val_split import stratified_split

    manifest = read_manifest(cfg.data.data_dir)
    _, labels = read_arrays(cfg.data.data_dir, "train", manifest)
    pool = len(labels) if cfg.data.subset is None else min(cfg.data.subset, len(labels))
    size = cfg.data.val if cfg.data.val is not None else min(DEFAULT_VAL, pool // 10)
    if size == 0:
        return Holdout(None, None)
    train, val = stratified_split(labels[:pool], size, cfg.run.seed)
    if recorded is not None:
        val = np.asarray(recorded, dtype=np.int64)
        train = np.setdiff1d(np.arange(pool), val)
    return Holdout(train, val)


@dataclass
class Loaders:
    train: SplitLoader
    test: SplitLoader
    val: SplitLoader | None  # None without a validation split
    kind: str  # "ffcv" or "torch"
    reason: str  # one clause: why this path (--loader, or what auto found)


def build_loaders(cfg: TrainConfig, setup: DeviceSetup, ctx: DistContext, split: Holdout) -> Loaders:
    from common.config import AugmentConfig
    from pipeline.loaders import open_loader, resolve_loader
    from pipeline.numba_threads import prefer_threading_layer

    prefer_threading_layer(torch_on_cpu=setup.device.type == "cpu")
    kind, reason = resolve_loader(cfg.data.loader, setup.device, cfg.data.data_dir)
    workers, clamped = loader_workers(cfg.data.workers, setup.device, ctx)
    if clamped:
        reason = f"{reason}; {clamped}"
    # copy=False: the trainer consumes each batch before the next (FFCV reuses its buffers).
    open_split = functools.partial(open_loader, kind, cfg.data.data_dir, seed=cfg.run.seed, device=setup.device,
                                   workers=workers, distributed=ctx.enabled, copy=False)
    train = open_split("train", cfg.optim.batch_size, cfg.augment, subset=cfg.data.subset, indices=split.train)
    test = open_split("test", EVAL_BATCH, None, subset=cfg.data.test_subset)
    val = None
    if split.val is not None:  # scored like the test set: in order, unaugmented, every image
        val = open_split("train", EVAL_BATCH, AugmentConfig.none(), indices=split.val, shuffle=False, drop_last=False)
    return Loaders(train, test, val, kind, reason)
