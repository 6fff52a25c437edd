"""The learning-rate schedules a run can follow, built on torch's own schedulers.

- "plateau": `ReduceLROnPlateau`, stepped once per epoch with the deciding split's loss.
- "onecycle": `LambdaLR`, stepped after every optimizer step: the lr climbs linearly from 0 to the
  peak (`--lr`) over the first `peak_at` of the run's steps, then falls linearly to 0 at the last
  step (the triangular schedule of the fast CIFAR-10 recipes: cifar10-fast, airbench). Its whole
  state is the step count (`last_epoch`), which the checkpoint carries, so a run stopped mid-epoch
  resumes on the same lr.

`--warmup-steps` (training/components.py: warmup_factor) is a separate, older mechanism for the plateau
schedule; with "onecycle" the warm-up is part of the schedule.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from common.config import OptimConfig

Scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau | torch.optim.lr_scheduler.LambdaLR


@dataclass(frozen=True)
class OneCycle:
    """lr factor of optimizer step t (0-based) of a `total`-step run peaking after `peak` steps.

    Warm-up: step t < peak trains at (t + 1) / peak, so the first step is not wasted at lr 0 and
    step peak - 1 is at the peak. Decay: step t >= peak at (total - t) / (total - peak + 1), so the
    last step trains at the smallest positive factor and the factor is 0 past the end.
    A callable object, not a lambda, so LambdaLR's state_dict can leave it out and resume rebuilds it.
    """

    total: int
    peak: int

    def __call__(self, step: int) -> float:
        if step >= self.total:
            return 0.0
        if step < self.peak:
            return (step + 1) / self.peak
        return (self.total - step) / (self.total - self.peak + 1)


def build_scheduler(optimizer: torch.optim.Optimizer, optim: OptimConfig, steps_per_epoch: int) -> Scheduler:
    """The run's schedule; `steps_per_epoch` is what train_epoch runs (after --max-steps)."""
    if optim.schedule == "onecycle":
        total = max(1, optim.epochs * steps_per_epoch)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, OneCycle(total, max(1, round(optim.peak_at * total))))
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=optim.plateau_factor, patience=optim.plateau_patience,
        threshold=optim.plateau_threshold)


def per_step(scheduler: Scheduler) -> bool:
    """True when the schedule advances after every optimizer step (not once per epoch)."""
    return not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
