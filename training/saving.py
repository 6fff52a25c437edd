"""Writing a run's progress: one epoch's files, a mid-epoch stop, the final summary.

All of it runs on rank 0 only (through `on_main`), and every file is atomic. The order inside
`save_epoch` is what makes a crash at any point recoverable: predictions and best.pt first,
last.pt (the resume point) next, metrics after it; resume trims metrics to last.pt's epoch, and
predictions carry their epoch, which analysis checks against the checkpoint's.

An epoch's files are written by a `BackgroundWriter` thread from a CPU snapshot taken between
steps, so the next epoch's first step does not wait for an 85 MB fsync'd checkpoint (every torchrun
rank would wait with rank 0). One group is in flight at a time: the next save, a stop, and the end
of the run wait for it first, and an error in it (a full disk) is raised there. The curves figure
is drawn once, at the end of the run or when it stops.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch

from common.errors import UserError
from common.figures import curves_figure, save_figure
from common.records import RunSummary, Status
from common.rundir import RunDir
from training.components import Parts
from training.distributed import DistContext
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
    # No number where no epoch was scored yet (--test-every needed mid-run: its epochs record NaN),
    # so summary.json stays strict JSON.
    scored = state.best_epoch > 0 and state.best_acc == state.best_acc
    return RunSummary(status=status, epochs_done=state.epoch, epochs=epochs,
                      best_acc=state.best_acc if scored else None,
                      best_epoch=state.best_epoch, wall_seconds=state.wall_seconds, decided_on=decided_on,
                      best_test_acc=_scored(best), final_test_acc=_scored(last),
                      final_test_acc_tta=_scored(last, "test_acc_tta"))


def _scored(row: dict[str, Any] | None, key: str = "test_acc") -> float | None:
    """An epoch's test accuracy; None where the test set was not scored (--test-every needed) or,
    for TTA (test_acc_tta), not with --tta."""
    value = row.get(key) if row else None
    return value if value is not None and value == value else None


class BackgroundWriter:
    """Runs one write group at a time in a thread; `wait` joins it and raises what it raised."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, group: Callable[[], None]) -> None:
        self.wait()
        self._thread = threading.Thread(target=self._run, args=(group,), name="run-writer")
        self._thread.start()

    def _run(self, group: Callable[[], None]) -> None:
        try:
            group()
        except BaseException as exc:  # handed to the main thread by wait()
            self._error = exc

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def cpu_snapshot(tree: Any) -> Any:
    """A copy of every tensor in a (nested) checkpoint dict on the CPU: the training step goes on
    changing the live tensors in place while the copy is written."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().to("cpu", copy=True)
    if isinstance(tree, dict):
        return {k: cpu_snapshot(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(cpu_snapshot(v) for v in tree)
    return tree


def save_epoch(run: RunDir, state: TrainState, parts: Parts, scored: tuple[np.ndarray, np.ndarray] | None,
               improved: bool, epochs: int, decided_on: str, writer: BackgroundWriter,
               tensorboard: Any = None) -> None:
    """Snapshot this epoch's state and write its files in the background. `scored`: the test
    labels and probabilities, None when the test set was not scored this epoch (then no
    predictions are written, and those on disk stay tagged with their own epoch)."""
    checkpoint = cpu_snapshot(state.checkpoint(parts))
    rows = [dict(r) for r in state.rows]
    summary = summary_of(state, Status.RUNNING, epochs, decided_on)
    epoch = state.epoch

    def group() -> None:
        if scored is not None:
            run.write_predictions("last", *scored, epoch=epoch)
            if improved:
                run.write_predictions("best", *scored, epoch=epoch)
        run.save_checkpoint("last", checkpoint, also_best=improved)
        run.write_metrics(rows)
        run.write_summary(summary)

    writer.submit(group)
    if tensorboard is not None:
        tensorboard.epoch(state.rows[-1])


def draw_curves(run: RunDir, state: TrainState, title: str, lr_drops: bool = True) -> None:
    """curves.png from the rows so far (validation included): at the end of a run and on a stop.
    `lr_drops`: mark the plateau schedule's drops (a per-step schedule's lr falls every epoch)."""
    if state.rows:
        save_figure(curves_figure(state.rows, title, lr_drops=lr_drops), run.curves_path)


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
    identical by construction, and checking it means a silent desync cannot hide. Buffers are not
    kept in step by DDP (training/components.py: `broadcast_buffers=False`), so rank 0's are broadcast
    first, as before an evaluation: the digests then compare the parameters DDP is responsible for,
    plus the buffers every rank evaluated and rank 0 saved."""
    summary = summary_of(state, Status.FINISHED, epochs, decided_on)
    in_sync = True
    if ctx.enabled:
        ctx.broadcast_buffers(parts.bare)
        digests = ctx.gather(weight_digest(parts))
        in_sync = all(d == digests[0] for d in digests)
        summary.processes, summary.weights_in_sync, summary.weight_digests = ctx.world, in_sync, digests
    on_main(ctx, lambda: run.write_summary(summary))
    if not in_sync:
        raise UserError(f"the {ctx.world} processes ended with different weights ({summary.weight_digests}); "
                        "this is a bug, please report it with the run's config.json")
