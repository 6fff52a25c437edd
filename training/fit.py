"""The training loop: SGD + ReduceLROnPlateau, writing a run directory. Read it top to bottom.

The parts it stands on, one file each: run_setup (folder, config, data, disk), parts (model,
optimizer, loaders), state (what a checkpoint holds), epoch (the step loop and evaluation),
saving (an epoch's files), status (how a run ends), distributed (torchrun).

Faults and what survives them (docs/RELIABILITY.md has the full table):
- SIGINT / SIGTERM: stop at the next step boundary, save that state, exit 130 with the resume
  command; a second signal quits at once, keeping the previous checkpoint.
- SIGKILL / power loss: every file is written atomically, so `last.pt` is the previous one.
- NaN/inf loss: stop naming epoch and step; `last.pt` stays the last good epoch.
- full or read-only disk: checked before training; a failing write leaves the old file in place.
- a second process on the same run: refused while the first holds the run's lock.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.config import TrainConfig
from common.lock import FolderLock, reading_data
from common.rundir import RunDir
from models.tta import tta_name
from training.components import build_loaders, build_parts, holdout
from training.device import resolve_device
from training.distributed import context, device_for
from training.epoch import Session, Stopper, StopRequested, evaluate_loader, evaluate_or_stop, score_test, train_epoch
from training.progress import Progress
from training.resolution import describe as describe_resolution
from training.run_setup import check_data, check_free_space, create_run, new_run_id, open_run, record_resume
from training.saving import BackgroundWriter, draw_curves, finish, on_main, save_epoch
from training.state import TrainState, seed_everything
from training.status import run_status

__all__ = ["TrainResult", "train", "evaluate_loader"]


@dataclass
class TrainResult:
    run: RunDir
    best_acc: float
    best_epoch: int
    epochs_done: int
    seconds: float
    main: bool = True  # False on torchrun ranks other than 0, which print nothing
    decided_on: str = "test"  # the split whose accuracy chose best.pt (best_acc) and drove the LR schedule
    best_test_acc: float = float("nan")  # test accuracy at best_epoch
    final_test_acc: float = float("nan")
    final_test_acc_tta: float = float("nan")  # with --tta
    tta_name: str = "flip TTA"  # what final_test_acc_tta scored (models/tta.py)


def train(cfg: TrainConfig, resume: str | Path | None = None, extra_epochs_to: int | None = None,
          log: Callable[[str], None] = print, progress: bool = True,
          overrides: dict[tuple[str, str], Any] | None = None, lock: bool = True) -> TrainResult:
    """Train (or resume) one run; under torchrun, one rank of a DistributedDataParallel run.

    `extra_epochs_to` raises a resumed run's epoch budget; `overrides` replaces a resumed run's
    environment settings (run_setup.ENVIRONMENT); `lock=False` when the caller already holds the
    lock of a folder enclosing the run (compare).
    """
    ctx = context(_requested_device(cfg, resume, overrides))
    log = log if ctx.main else _quiet
    run, cfg, saved = open_run(ctx, cfg, resume, extra_epochs_to, overrides)
    setup = resolve_device(device_for(ctx, cfg.run.device), cfg.run.amp, cfg.run.channels_last, cfg.model.norm)
    data = check_data(cfg, run, saved)
    cfg.model.num_classes = len(data.classes)  # 10 for CIFAR-10; an image folder's own count
    with contextlib.ExitStack() as held:
        held.enter_context(reading_data(cfg.data.data_dir))  # prepare --force waits for this run to end
        if lock and ctx.main:
            took = held.enter_context(FolderLock(run.path, "train")).took_over
            if took:
                log(f"took over the lock of {run.path} from a process that no longer runs ({took})")
        split = holdout(cfg, run.read_val_indices() if saved is not None else None)
        cfg.data.val = 0 if split.val is None else len(split.val)  # config.json records the resolved size
        loaders = build_loaders(cfg, setup, ctx, split)
        train_loader, test_loader = loaders.train, loaders.test
        steps = len(train_loader) if cfg.optim.max_steps is None else min(len(train_loader), cfg.optim.max_steps)
        seed_everything(cfg.run.seed)
        parts = build_parts(cfg, setup, ctx, steps)
        decided_on = _decided_on(cfg, loaders.val is not None)
        if saved is None:
            state = TrainState(run_id=new_run_id(ctx))
            on_main(ctx, lambda: create_run(run, cfg, state.run_id, data, setup, ctx, parts.bare, loaders.kind,
                                            split.val))
        else:
            state = _resume(ctx, run, cfg, parts, saved, loaders.kind)
            on_main(ctx, lambda: record_resume(run, cfg, setup, ctx, state.epoch, loaders.kind, state.saved_world))
        log(_header(run, cfg, setup, ctx, loaders, steps, state))
        tensorboard = _tensorboard(run) if ctx.main and cfg.run.tensorboard else None
        test_every = cfg.run.test_every or ("needed" if setup.device.type == "cuda" else "epoch")
        writer = BackgroundWriter()  # this epoch's files are written while the next one trains
        curves = functools.partial(draw_curves, run, state, _title(cfg, run), cfg.optim.schedule == "plateau")
        with Stopper(log) as stopper, run_status(ctx, run, state, parts, steps, writer, curves):
            session = Session(parts, setup, ctx, cfg.optim, steps, stopper, cfg.augment)
            for epoch in range(state.epoch, cfg.optim.epochs):
                # train one epoch (from the saved step when resuming mid-epoch)
                bar = Progress(steps, state.partial.step if state.partial else 0,
                               f"epoch {epoch + 1}/{cfg.optim.epochs}", progress and ctx.main, log)
                sums = train_epoch(session, epoch, train_loader, bar, state.partial)
                state.partial = None
                t_eval = time.perf_counter()
                # Validation first: whether the test set is scored may depend on it (epoch.score_test).
                val_loss, val_acc = (evaluate_or_stop(session, loaders.val, epoch, sums)[:2]
                                     if loaders.val is not None else (None, None))
                last = epoch + 1 == cfg.optim.epochs
                scored = None
                test_loss = test_acc = test_acc_tta = float("nan")
                if score_test(test_every, decided_on, last, val_acc is not None and val_acc > state.best_acc):
                    test = evaluate_or_stop(session, test_loader, epoch, sums, cfg.run.tta, cfg.run.tta_shift)
                    test_loss, test_acc, test_acc_tta = test.loss, test.acc, test.tta_acc
                    scored = (test.labels, test.probs)
                # The split that decides: validation when held out, else (--val 0) the test set; with a
                # fixed schedule and no validation nothing decides, and best.pt is the last epoch.
                loss, acc = (val_loss, val_acc) if val_loss is not None and val_acc is not None else (test_loss, test_acc)
                if not parts.per_step:
                    parts.scheduler.step(loss)  # type: ignore[arg-type]  # ReduceLROnPlateau: the metric
                row = {"epoch": epoch + 1, "train_loss": sums.loss, "train_acc": sums.acc, "test_loss": test_loss,
                       "test_acc": test_acc, "test_acc_tta": test_acc_tta, "lr": sums.lr,
                       "seconds": sums.seconds + time.perf_counter() - t_eval,
                       "img_per_s": sums.seen / max(sums.seconds, 1e-9), "val_loss": val_loss, "val_acc": val_acc,
                       "wall_seconds": state.wall_seconds}
                improved = state.record(row, acc, latest=decided_on == "last epoch")
                on_main(ctx, functools.partial(save_epoch, run, state, parts, scored, improved, cfg.optim.epochs,
                                               decided_on, writer, tensorboard))
                log(_epoch_line(row, cfg.optim.epochs, improved, tta_name(cfg.run.tta_shift)))
                if stopper.agreed(ctx) and epoch + 1 < cfg.optim.epochs:
                    raise StopRequested(stopper.requested or "SIGTERM", None)
            on_main(ctx, writer.wait)  # the last epoch's files, inside run_status: a failed write is the run's status
        if tensorboard is not None:
            tensorboard.close()
        on_main(ctx, curves)
        finish(ctx, run, state, parts, cfg.optim.epochs, decided_on)
    best, final = state.best_row or {}, state.rows[-1] if state.rows else {}
    return TrainResult(run, state.best_acc, state.best_epoch, cfg.optim.epochs, state.wall_seconds, main=ctx.main,
                       decided_on=decided_on, best_test_acc=best.get("test_acc", math.nan),
                       final_test_acc=final.get("test_acc", math.nan), final_test_acc_tta=final.get("test_acc_tta", math.nan),
                       tta_name=tta_name(cfg.run.tta_shift))


# ---- small pieces the loop reads better without --------------------------------------------------

def _quiet(message: str) -> None:
    pass


def _decided_on(cfg: TrainConfig, has_val: bool) -> str:
    """What chooses best.pt: the validation split, the test set (--val 0 with the plateau schedule,
    which the test loss then drives: the original assignment's habit), or nothing (a fixed
    schedule without validation: best.pt is the last epoch, and the test set decides nothing)."""
    if has_val:
        return "validation"
    return "test" if cfg.optim.schedule == "plateau" else "last epoch"


def _requested_device(cfg: TrainConfig, resume: str | Path | None,
                      overrides: dict[tuple[str, str], Any] | None) -> str:
    """The --device that decides torchrun's backend: an override, else the run's own (on resume)."""
    if overrides and ("run", "device") in overrides:
        return str(overrides[("run", "device")])
    if resume is not None and RunDir(resume).config_path.is_file():
        return RunDir(resume).train_config().run.device
    return cfg.run.device


def _resume(ctx: Any, run: RunDir, cfg: TrainConfig, parts: Any, saved: dict[str, Any], loader: str) -> TrainState:
    from common.errors import UserError

    state = TrainState.restore(run.load_checkpoint("last"), parts, run.read_metrics(),
                               str(run.checkpoint_path("last")))
    if state.partial is not None and state.partial.world != ctx.world:
        raise UserError(f"{run.checkpoint_path('last')} was saved in the middle of epoch {state.epoch + 1} "
                        f"by {state.partial.world} process(es); resume it with the same number of processes "
                        f"(now {ctx.world})")
    before = saved["loader"]
    if state.partial is not None and before != loader:
        raise UserError(f"{run.checkpoint_path('last')} was saved in the middle of epoch {state.epoch + 1} with the "
                        f"{before} loader, whose shuffle order differs from the {loader} loader's; resume it with "
                        f"--loader {before}")
    on_main(ctx, lambda: check_free_space(run, parts.bare))
    if state.epoch >= cfg.optim.epochs:
        raise UserError(f"{run.path} already finished {state.epoch} of {cfg.optim.epochs} epochs; "
                        f"pass --epochs N (N > {state.epoch}) to train further")
    on_main(ctx, run.remove_stale_temps)  # half-written files of a SIGKILLed predecessor
    return state


def _tensorboard(run: RunDir) -> Any:
    """TensorBoard event files under RUN/tb/ (metrics.csv stays the source of truth)."""
    from training.tensorboard_log import TensorBoardLog

    return TensorBoardLog(run.path)


def _title(cfg: TrainConfig, run: RunDir) -> str:
    return f"ResNet-18 ({cfg.model.norm} norm), {run.path.name}"


def _header(run: RunDir, cfg: TrainConfig, setup: Any, ctx: Any, loaders: Any, steps: int, state: TrainState) -> str:
    ranks = (f" × {ctx.world} processes ({ctx.backend}, global batch {ctx.world * cfg.optim.batch_size})"
             if ctx.enabled else "")
    shortcut = "" if cfg.model.shortcut_norm in ("same", cfg.model.norm) else f", {cfg.model.shortcut_norm}-norm shortcuts"
    width = "" if cfg.model.width == 64 else f", width {cfg.model.width}"
    width += ", weight-standardized convs" if cfg.model.weight_std else ""
    start = state.epoch + 1
    partial = f" (epoch {start} from step {state.partial.step + 1})" if state.partial else ""
    note = f"; {setup.note}" if setup.note else ""
    return (f"run {run.path}: ResNet-18 ({cfg.model.norm} norm{shortcut}{width}) on {setup.describe()}{ranks}; "
            f"{loaders.train.info.count:,} train / {loaders.test.info.count:,} test images"
            + _decides(cfg, loaders.val)
            + f", {steps} steps/epoch of "
            f"{cfg.optim.batch_size}, epochs {start}-{cfg.optim.epochs}{partial}{describe_resolution(cfg.augment, cfg.optim.epochs)}; "
            f"{loaders.kind} loader "
            f"({loaders.reason}){note}")


def _decides(cfg: TrainConfig, val: Any) -> str:
    schedule = "the LR and best.pt" if cfg.optim.schedule == "plateau" else "best.pt"
    if val is not None:
        return f" / {val.info.count:,} validation (decides {schedule})"
    if cfg.optim.schedule == "plateau":
        return " (no validation split: the test set decides the LR and best.pt)"
    return " (no validation split: a fixed schedule, best.pt is the last epoch)"


def _epoch_line(row: dict[str, Any], epochs: int, improved: bool, tta_kind: str = "flip TTA") -> str:
    val = f"val loss {row['val_loss']:.4f} acc {100 * row['val_acc']:5.2f}%  " if row.get("val_acc") is not None else ""
    tta = f"{tta_kind} {100 * row['test_acc_tta']:5.2f}%  " if math.isfinite(row.get("test_acc_tta", math.nan)) else ""
    return (f"epoch {int(row['epoch']):>3}/{epochs}  train loss {row['train_loss']:.4f} "
            f"acc {100 * row['train_acc']:5.2f}%  {val}test loss {row['test_loss']:.4f} acc {100 * row['test_acc']:5.2f}%  "
            f"{tta}lr {row['lr']:.2g}  {row['seconds']:.1f} s  {row['img_per_s']:,.0f} img/s"
            + ("  *best" if improved else ""))
