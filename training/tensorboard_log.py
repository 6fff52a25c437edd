"""TensorBoard event files for a run: one set of scalars per finished epoch, under RUN/tb/.

    log = TensorBoardLog(run.path)      # rank 0 only; cheap until the first epoch is written
    log.epoch(row)                      # the metrics.csv row: epoch, train/test loss and accuracy, lr, ...
    log.close()

Tags (step = epoch, 1-based like metrics.csv): loss/train, loss/test, accuracy/train,
accuracy/test (fractions 0-1, as in metrics.csv), lr, speed/img_per_s, time/epoch_seconds. A custom
scalars layout also puts train and test on one chart each for loss and accuracy.

Resuming: the writer is opened lazily at the first `epoch()` call with purge_step = that epoch, so
TensorBoard discards anything an earlier process logged at that epoch or later (an epoch logged just
before a SIGKILL and then trained again, or the tail of a run resumed from an older checkpoint).
Re-opening the same run therefore never shows duplicate steps, and the caller passes nothing
about resuming. That rests on TensorBoard reading the newer event file last: it reads a folder's
files in name order, and torch names one `events.out.tfevents.<second>.<host>.<pid>.<counter>`, so
two files opened in the same second would sort by pid and counter as text ("10" before "9") and the
older file's purge could drop the newer epochs. A writer therefore opens in a later second than
every event file already there (waiting up to one second, only when one was opened this second).

This module imports neither the training loop nor FFCV (only torch's SummaryWriter, and that
only when a row is written), so `python cli.py --help` and the analysis side stay light.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

TB_DIR = "tb"
SCALARS = {  # metrics row key -> TensorBoard tag
    "train_loss": "loss/train",
    "test_loss": "loss/test",
    "train_acc": "accuracy/train",
    "test_acc": "accuracy/test",
    "lr": "lr",
    "img_per_s": "speed/img_per_s",
    "seconds": "time/epoch_seconds",
}
LAYOUT = {"train vs test": {"loss": ["Multiline", ["loss/train", "loss/test"]],
                            "accuracy": ["Multiline", ["accuracy/train", "accuracy/test"]]}}


def tb_dir(run_path: str | Path) -> Path:
    return Path(run_path) / TB_DIR


def _seconds_in_names(folder: Path) -> list[int]:
    """The opening second in each event file's name (field 3 of events.out.tfevents.<s>.<host>...)."""
    fields = (p.name.split(".") for p in folder.glob("events.out.tfevents.*"))
    return [int(f[3]) for f in fields if len(f) > 3 and f[3].isdigit()]


def wait_for_a_later_second(folder: Path) -> None:
    """Sleep until the clock's second is past every event file's opening second in `folder`, so a
    new file sorts after them. A file named more than a second ahead (a clock set back) cannot be
    outwaited sensibly and is left as it is."""
    delay = max(_seconds_in_names(folder), default=0) + 1 - time.time()
    if 0 < delay <= 1:
        time.sleep(delay)


class TensorBoardLog:
    """Scalars per epoch into RUN/tb/, flushed after every epoch; see the module docstring."""

    def __init__(self, run_path: str | Path):
        self.dir = tb_dir(run_path)
        self._writer: Any = None

    def _open(self, first_step: int) -> Any:
        from torch.utils.tensorboard import SummaryWriter

        wait_for_a_later_second(self.dir)
        writer = SummaryWriter(log_dir=str(self.dir), purge_step=first_step, flush_secs=30)
        writer.add_custom_scalars(LAYOUT)
        return writer

    def epoch(self, row: dict[str, Any]) -> None:
        """Write one metrics row at step = row["epoch"]; keys other than those in SCALARS are ignored.

        A missing key is skipped and a NaN/inf value (a diverged run) is written as is: TensorBoard
        shows the gap, which is the truth.
        """
        step = int(row["epoch"])
        if self._writer is None:
            self._writer = self._open(step)
        for key, tag in SCALARS.items():
            value = row.get(key)
            if value is None:
                continue
            value = float(value)
            self._writer.add_scalar(tag, value if math.isfinite(value) else float("nan"), step)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> TensorBoardLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
