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
from collections.abc import Iterator

from common.errors import UserError
from common.records import Status
from common.rundir import RunDir
from training.distributed import DistContext
from training.epoch import Diverged, Interrupted, StopRequested
from training.parts import Parts
from training.saving import on_main, save_partial
from training.state import TrainState


@contextlib.contextmanager
def run_status(ctx: DistContext, run: RunDir, state: TrainState, parts: Parts, steps: int) -> Iterator[None]:
    resume_hint = f"resume with `python cli.py train --resume {run.path}`"
    on_main(ctx, lambda: run.update_summary(status=Status.RUNNING))
    try:
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
