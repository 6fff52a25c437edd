"""Writing a run's progress: one epoch's files, a mid-epoch stop, the final summary.

All of it runs on rank 0 only (through `on_main`), and every file is atomic. The order inside
`save_epoch` is what makes a crash at any point recoverable: predictions and best.pt first,
last.pt (the resume point) next, metrics after it; resume trims metrics to last.pt's epoch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from common.errors import UserError
from common.figures import curves_figure, save_figure
from common.records import RunSummary, Status
from common.rundir import RunDir
from training.distributed import DistContext
from training.parts import Parts
from training.state import Partial, TrainState

T = TypeVar("T")


def on_main(ctx: DistContext, fn: Callable[[], T]) -> T | None:
    """Run fn on rank 0 only; a UserError there (e.g. a full disk) stops every rank, not just 0."""
    result, error = None, None
    if ctx.main:
        try:
            result = fn()
        except UserError as exc:
            error = exc
    if ctx.enabled:
        message = ctx.broadcast(str(error) if error is not None else None)
        if message is not None and error is None:
            raise UserError(message)
    if error is not None:
        raise error
    return result


def summary_of(state: TrainState, status: Status, epochs: int, decided_on: str) -> RunSummary:
    """summary.json says which split chose best.pt, and the test accuracy there and at the end."""
    best, last = state.best_row, (state.rows[-1] if state.rows else None)
    return RunSummary(status=status, epochs_done=state.epoch, epochs=epochs, best_acc=state.best_acc,
                      best_epoch=state.best_epoch, wall_seconds=state.wall_seconds, decided_on=decided_on,
                      best_test_acc=best["test_acc"] if best else None,
                      final_test_acc=last["test_acc"] if last else None)


def save_epoch(run: RunDir, state: TrainState, parts: Parts, labels: np.ndarray, probs: np.ndarray,
               improved: bool, epochs: int, title: str, decided_on: str, tensorboard: Any = None) -> None:
    checkpoint = state.checkpoint(parts)
    run.write_predictions("last", labels, probs)
    if improved:
        run.write_predictions("best", labels, probs)
    run.save_checkpoint("last", checkpoint, also_best=improved)
    run.write_metrics(state.rows)
    save_figure(curves_figure(state.rows, title), run.curves_path)
    run.write_summary(summary_of(state, Status.RUNNING, epochs, decided_on))
    if tensorboard is not None:
        tensorboard.epoch(state.rows[-1])


def save_partial(run: RunDir, state: TrainState, parts: Parts, partial: Partial) -> None:
    run.save_checkpoint("last", state.checkpoint(parts, partial))
    run.update_summary(status=Status.INTERRUPTED, stopped_at={"epoch": partial.epoch + 1, "step": partial.step})


def weight_digest(parts: Parts) -> str:
    """sha256 (16 hex digits) over every tensor of the model's state: parameters and buffers."""
    digest = hashlib.sha256()
    for tensor in parts.bare.state_dict().values():
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def finish(ctx: DistContext, run: RunDir, state: TrainState, parts: Parts, epochs: int, decided_on: str) -> None:
    """The final summary. Under torchrun the ranks first compare weight digests: DDP keeps replicas
    identical by construction, and checking it means a silent desync cannot hide."""
    summary = summary_of(state, Status.FINISHED, epochs, decided_on)
    in_sync = True
    if ctx.enabled:
        digests = ctx.gather(weight_digest(parts))
        in_sync = all(d == digests[0] for d in digests)
        summary.processes, summary.weights_in_sync, summary.weight_digests = ctx.world, in_sync, digests
    on_main(ctx, lambda: run.write_summary(summary))
    if not in_sync:
        raise UserError(f"the {ctx.world} processes ended with different weights ({summary.weight_digests}); "
                        "this is a bug, please report it with the run's config.json")
