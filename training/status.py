"""How a run ends, in one place: every way out of the epoch loop maps to one status in
summary.json and one exception for the CLI.

| what happened                        | summary.json | raised                      | exit |
|--------------------------------------|--------------|-----------------------------|------|
| SIGINT/SIGTERM mid-epoch             | interrupted  | Interrupted (state saved)   | 130  |
| SIGINT/SIGTERM at an epoch end       | interrupted  | Interrupted (epoch saved)   | 130  |
| a second signal (KeyboardInterrupt)  | interrupted  | Interrupted (last.pt kept)  | 130  |
| non-finite loss                      | diverged     | Diverged (last.pt kept)     | 2    |
| any other UserError (disk full, ...) | failed       | that error                  | 2    |
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from common.errors import UserError
from common.records import Status
from common.rundir import RunDir
from training.components import Parts
from training.distributed import DistContext
from training.epoch import Diverged, Interrupted, StopRequested
from training.saving import BackgroundWriter, on_main, save_partial
from training.state import TrainState


@contextlib.contextmanager
def _settled(ctx: DistContext, writer: BackgroundWriter, curves: Callable[[], None]) -> Iterator[None]:
    """On the way out of a stopped run: let the epoch's files in flight land first (a partial
    checkpoint must not race them; their own failure, e.g. a full disk, is then the run's error),
    and draw the curves so far."""
    try:
        yield
    except BaseException:
        on_main(ctx, writer.wait)
        with contextlib.suppress(Exception):
            on_main(ctx, curves)
        raise


@contextlib.contextmanager
def run_status(ctx: DistContext, run: RunDir, state: TrainState, parts: Parts, steps: int,
               writer: BackgroundWriter, curves: Callable[[], None]) -> Iterator[None]:
    resume_hint = f"resume with `python cli.py train --resume {run.path}`"
    on_main(ctx, lambda: run.update_summary(status=Status.RUNNING))
    try:
        with _settled(ctx, writer, curves):
            yield
    except StopRequested as stop:
        if stop.partial is None:
            on_main(ctx, lambda: run.update_summary(status=Status.INTERRUPTED))
            raise Interrupted(f"{stop.signame}: stopped after epoch {state.epoch}, whose checkpoint is saved; "
                              f"{resume_hint}") from None
        partial = stop.partial
        on_main(ctx, lambda: save_partial(run, state, parts, partial))
        raise Interrupted(f"{stop.signame}: stopped in epoch {partial.epoch + 1} after step {partial.step} of {steps} "
                          f"and saved that state to {run.checkpoint_path('last')}; {resume_hint}") from None
    except KeyboardInterrupt:
        on_main(ctx, lambda: run.update_summary(status=Status.INTERRUPTED))
        hint = resume_hint if run.has_checkpoint("last") else "no epoch finished, so there is nothing to resume"
        raise Interrupted(f"interrupted during epoch {state.epoch + 1}; kept the checkpoint of epoch {state.epoch}; "
                          f"{hint}") from None
    except Diverged as exc:
        on_main(ctx, lambda: run.update_summary(status=Status.DIVERGED))
        raise exc.at(str(run.checkpoint_path("last"))) from None
    except Interrupted:
        raise
    except UserError as exc:
        message = str(exc)
        # e.g. the disk filled up mid-run: say so in summary.json if there is room for it
        with contextlib.suppress(UserError):
            on_main(ctx, lambda: run.update_summary(status=Status.FAILED, error=message))
        raise
