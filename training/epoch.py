"""One training epoch and one evaluation pass.

An epoch either returns its sums or raises: `StopRequested` when SIGINT/SIGTERM asked the run to
stop (carrying the exact mid-epoch state to save), `Diverged` when the loss is no longer finite.
The status bookkeeping for both lives in training/status.py, so this file is only the step loop.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections import deque
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.config import AugmentConfig, OptimConfig
from common.errors import UserError
from models.tta import tta_logits
from training.components import Parts, warmup_factor
from training.device import DeviceSetup
from training.distributed import DistContext
from training.progress import Progress
from training.resolution import downscale, resolution_at
from training.state import Partial

if TYPE_CHECKING:
    from pipeline.loaders import SplitLoader


class Diverged(UserError):
    """The loss is no longer finite, or (`window` > 0) its mean over the last `window` steps stays
    above `BlowUpGuard`'s limit: a finite blow-up that would otherwise train garbage to the end."""

    def __init__(self, loss: float, epoch: int, step: int, checkpoint: str = "", window: int = 0, limit: float = 0.0):
        self.loss, self.epoch, self.step, self.window, self.limit = loss, epoch, step, window, limit
        where = f"; the last good checkpoint is {checkpoint} (if any)" if checkpoint else ""
        what = (f"the train loss averaged {loss:.4g} over the {window} steps up to step {step + 1} of epoch {epoch + 1}, "
                f"above the limit {limit:.2f} (3 × ln of the class count; a model that learned nothing sits at a third "
                "of it)" if window else f"the loss became {loss} in epoch {epoch + 1} by step {step + 1}")
        super().__init__(f"training diverged: {what}{where}; lower --lr and start a new run")

    def at(self, checkpoint: str) -> Diverged:
        """The same event, naming the checkpoint to fall back on."""
        return Diverged(self.loss, self.epoch, self.step, checkpoint, self.window, self.limit)


class BlowUpGuard:
    """Stops a finite blow-up: the mean train loss over the last `window` steps above
    `factor` × ln C. A model that predicts uniformly scores ln C; a run that learns stays below it
    after its first steps, and one blown up by a huge lr sits orders of magnitude above (the rule's
    measurements on normal and broken runs: docs/BENCHMARKS.md, "Divergence guard"). The window
    restarts each epoch, so the first `window` steps of an epoch are judged with the next check."""

    WINDOW = 50
    FACTOR = 3.0

    def __init__(self, classes: int, window: int | None = None, factor: float | None = None):
        self.limit = (factor or self.FACTOR) * math.log(max(classes, 2))
        self.window = window or self.WINDOW
        self.marks: deque[tuple[int, float, float]] = deque()  # (step, global loss sum, global seen)

    def mean_above_limit(self, step: int, loss_sum: float, seen: float) -> float | None:
        """The window's mean loss when it is over the limit, else None (also while under `window` steps)."""
        self.marks.append((step, loss_sum, seen))
        while len(self.marks) > 1 and self.marks[1][0] <= step - self.window:
            self.marks.popleft()
        first, loss0, seen0 = self.marks[0]
        if step - first < self.window or seen <= seen0:
            return None
        mean = (loss_sum - loss0) / (seen - seen0)
        return mean if mean > self.limit else None


class Interrupted(UserError):
    exit_code = 130


class StopRequested(Exception):
    """A signal asked the run to stop; `partial` is the state to save (None: at an epoch end)."""

    def __init__(self, signame: str, partial: Partial | None):
        super().__init__(signame)
        self.signame = signame
        self.partial = partial


class Stopper:
    """SIGINT/SIGTERM ask the loop to stop at the next step boundary, where the state is whole
    and can be saved; a second signal stops at once, keeping the last saved checkpoint."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, log: Any):
        self.log = log
        self.requested: str | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> Stopper:
        for sig in self.SIGNALS:
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        self.log(f"{self.requested}: saving the state at the end of this step "
                 "(send it again to quit at once)")

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def agreed(self, ctx: DistContext) -> bool:
        """Did any rank get a signal? (a collective under torchrun: every rank must call it)"""
        return ctx.all_sum([1.0 if self.requested else 0.0])[0] > 0


@dataclass
class EpochSums:
    """An epoch's global running sums (over every rank), as of the last check."""

    loss_sum: float
    correct: float
    seen: float
    seconds: float  # training seconds, including those before a resume
    lr: float  # the lr at the epoch's first step (a per-step schedule moves it within the epoch)

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.seen, 1)

    @property
    def acc(self) -> float:
        return self.correct / max(self.seen, 1)

    def partial(self, epoch: int, steps_done: int, world: int) -> Partial:
        """The state a stop saves: `steps_done` steps of `epoch` with these sums."""
        return Partial(epoch, steps_done, self.loss_sum, self.correct, self.seen, self.seconds, world, self.lr)


@dataclass
class Session:
    """What every epoch of a run needs, fixed before the first one (training/fit.py builds it)."""

    parts: Parts
    setup: DeviceSetup
    ctx: DistContext
    optim: OptimConfig
    steps: int  # optimizer steps per epoch (after --max-steps)
    stopper: Stopper
    augment: AugmentConfig  # its progressive resizing is applied here, per step


def train_epoch(session: Session, epoch: int, loader: SplitLoader, progress: Progress, partial: Partial | None) -> EpochSums:
    """Train one epoch (resuming after `partial.step` steps when given); returns the global sums."""
    parts, setup, ctx, stopper, steps = session.parts, session.setup, session.ctx, session.stopper, session.steps
    # Syncing with the GPU every step would stall it, so there the loss (and, under torchrun, the
    # stop flag) is read every 20 steps; on the CPU reading it is free, so every step is checked.
    check_every = 20 if setup.device.type == "cuda" else 1
    skip = partial.step if partial else 0
    prior = partial.seconds if partial else 0.0
    first_lr = partial.lr if partial is not None and partial.lr is not None else parts.lr
    totals = (EpochSums(partial.loss_sum, partial.correct, partial.seen, prior, first_lr) if partial
              else EpochSums(0.0, 0.0, 0.0, 0.0, first_lr))
    # This rank's running sums, on the device; under torchrun rank 0 carries the restored global sums.
    loss_sum = torch.zeros((), device=setup.device, dtype=torch.float64)
    correct = torch.zeros((), device=setup.device, dtype=torch.float64)
    seen = 0
    if partial and ctx.main:
        loss_sum += partial.loss_sum
        correct += partial.correct
        seen = int(partial.seen)
    guard = BlowUpGuard(parts.classes)
    t0 = time.perf_counter()
    parts.step.train()
    loader.set_epoch(epoch)
    if skip < steps:
        for step, (x, y) in enumerate(loader):
            if step >= steps:
                break
            if step < skip:  # consumed before the interruption; same batches, same order
                continue
            # forward and backward (on images downscaled in an early epoch of progressive resizing),
            # under autocast where the device trains in mixed precision
            x = setup.batch(x)
            x = downscale(x, resolution_at(session.augment, epoch, x.shape[-1], session.optim.epochs))
            with setup.autocast():
                logits = parts.step(x)
                loss = parts.criterion(logits, y)
            parts.optimizer.zero_grad(set_to_none=True)
            parts.scaler.scale(loss).backward()
            # the update, then what follows every update: the per-step schedule and the EMA
            _optimizer_step(parts, warmup_factor(session.optim, epoch * steps + step))
            if parts.per_step:
                parts.scheduler.step()  # type: ignore[call-arg]  # LambdaLR: no metric
            parts.update_ema()
            loss_sum += loss.detach().double() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            seen += len(y)
            # the check: global sums, divergence, a stop request, progress
            if step % check_every == 0 or step == steps - 1 or (stopper.requested and not ctx.enabled):
                loss_all, correct_all, seen_all, stop_flags = ctx.all_sum(
                    [loss_sum.item(), correct.item(), float(seen), 1.0 if stopper.requested else 0.0])
                totals = EpochSums(loss_all, correct_all, seen_all, prior + time.perf_counter() - t0, first_lr)
                if not math.isfinite(totals.loss):
                    raise Diverged(totals.loss, epoch, step)
                blown = guard.mean_above_limit(step, totals.loss_sum, totals.seen)
                if blown is not None:
                    raise Diverged(blown, epoch, step, window=guard.window, limit=guard.limit)
                if stop_flags > 0:
                    raise StopRequested(stopper.requested or "SIGTERM", totals.partial(epoch, step + 1, ctx.world))
                progress.set({"loss": f"{totals.loss:.3f}", "acc": f"{100 * totals.acc:.1f}%",
                              "img/s": f"{totals.seen / max(totals.seconds, 1e-9):,.0f}"})
            progress.update(1)
    progress.close()
    totals.seconds = prior + time.perf_counter() - t0
    return totals


def _optimizer_step(parts: Parts, factor: float) -> None:
    if factor >= 1.0:
        parts.scaler.step(parts.optimizer)
    else:
        groups = parts.optimizer.param_groups
        base = [g["lr"] for g in groups]
        for g in groups:
            g["lr"] = g["lr"] * factor
        parts.scaler.step(parts.optimizer)
        for g, lr in zip(groups, base):
            g["lr"] = lr
    parts.scaler.update()


class _StopDuringEval(Exception):
    pass


class Scores(NamedTuple):
    """One pass over a split: mean cross-entropy (no smoothing), accuracy, labels and softmax
    probabilities in loader order, and (`tta`) the accuracy of flip test-time augmentation, NaN
    when it was not computed."""

    loss: float
    acc: float
    labels: np.ndarray
    probs: np.ndarray
    tta_acc: float = float("nan")


def evaluate_loader(model: nn.Module, loader: SplitLoader, setup: DeviceSetup, ctx: DistContext | None = None,
                    stopper: Stopper | None = None, tta: bool = False, tta_shift: int = 0) -> Scores:
    """Score a split in one pass (`Scores`). `tta` also scores test-time augmentation
    (models/tta.py: the mirror, and with `tta_shift` the shifted views), what `evaluate --tta`
    computes; loss, probabilities and the saved predictions stay the plain pass's.

    Under torchrun each rank scores its shard and the shards are gathered (DistributedSampler pads
    the last shard with repeats; they are dropped by index). A stop request on a single process
    raises `_StopDuringEval` (the test pass is not resumable midway; the epoch's training is saved).
    """
    ctx = ctx or DistContext()
    order = loader.order() if ctx.enabled else None
    model.eval()
    losses, probs, labels, combined = [], [], [], []  # kept on the device, moved to the host once at the end
    # On the CPU the plain pass runs in fp32 even when training uses bf16 autocast, so saved
    # predictions equal what analysis recomputes (fp32); TTA's extra views run in the training
    # precision on every device, as `evaluate --tta` does (analysis/inspection/test_predictions.py).
    precision = setup.autocast() if setup.device.type == "cuda" else contextlib.nullcontext()
    with torch.no_grad(), precision:
        for x, y in loader:
            if stopper is not None and stopper.requested and not ctx.enabled:
                raise _StopDuringEval
            x = setup.batch(x)
            logits = model(x).float()
            losses.append(F.cross_entropy(logits, y, reduction="none").double())
            probs.append(torch.softmax(logits, 1))
            labels.append(y)
            if tta:
                combined.append(tta_logits(model, x, logits, tta_shift, setup.autocast, setup.batch))
    loss = torch.cat(losses).cpu().numpy()
    p = torch.cat(probs).cpu().numpy()
    t = torch.cat(labels).cpu().numpy()
    c = torch.cat(combined).cpu().numpy() if tta else p  # the TTA logits
    if ctx.enabled:
        assert order is not None
        parts = ctx.gather((order[:len(t)], loss, t, p, c))
        idx = np.concatenate([part[0] for part in parts])
        _, first = np.unique(idx, return_index=True)  # sorted by test index, repeats dropped
        loss, t, p, c = (np.concatenate([part[i] for part in parts])[first] for i in (1, 2, 3, 4))
    n = max(len(t), 1)
    tta_acc = float((c.argmax(1) == t).mean()) if tta else float("nan")
    return Scores(float(loss.sum() / n), float((p.argmax(1) == t).mean()), t, p, tta_acc)


def score_test(every: str, decided_on: str, last: bool, new_best_on_val: bool) -> bool:
    """Whether an epoch scores the test set: every epoch with `every` "epoch" (the CPU default,
    where a test pass is small beside an epoch's steps); with "needed" (the CUDA default) only when
    the record needs it: the test set decides (plateau with --val 0), the final epoch, or a new best
    on validation (best.pt's test accuracy and predictions)."""
    return every == "epoch" or decided_on == "test" or last or new_best_on_val


def evaluate_or_stop(session: Session, loader: SplitLoader, epoch: int, sums: EpochSums,
                     tta: bool = False, tta_shift: int = 0) -> Scores:
    """Score a split after an epoch. Under torchrun BatchNorm running statistics differ between
    ranks (DDP syncs buffers only before each forward), so rank 0's are broadcast first: every rank
    then scores its shard with the same model, and the end-of-run weight digests agree."""
    parts, ctx, stopper = session.parts, session.ctx, session.stopper
    ctx.broadcast_buffers(parts.bare)
    if parts.ema is not None:
        ctx.broadcast_buffers(parts.ema.module)
    try:
        return evaluate_loader(parts.eval_model, loader, session.setup, ctx, stopper, tta, tta_shift)
    except _StopDuringEval:
        raise StopRequested(stopper.requested or "SIGTERM", sums.partial(epoch, session.steps, ctx.world)) from None
