"""Typed records of a run directory: the status, `summary.json` and the data record of
`config.json`.

Training writes these and analysis reads them; before they had types, both sides spelled the keys
and the status strings by hand (~40 `.get()` calls, "finished" in nine places), so a renamed key
would have been read as "missing" without any error. Unknown keys are kept (`extra`) so a newer
writer's fields survive a round trip through an older reader.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    """A run's state in summary.json. A `str` subclass, so JSON holds the plain word."""

    RUNNING = "running"
    FINISHED = "finished"
    INTERRUPTED = "interrupted"
    DIVERGED = "diverged"
    FAILED = "failed"
    UNKNOWN = "unknown"  # no summary.json, or a word this version does not know

    @classmethod
    def parse(cls, value: Any) -> Status:
        try:
            return cls(value)
        except ValueError:
            return cls.UNKNOWN


@dataclass
class RunSummary:
    """summary.json: rewritten at every epoch end and on every status change."""

    status: Status = Status.UNKNOWN
    epochs_done: int = 0
    epochs: int | None = None
    best_acc: float | None = None  # accuracy of the epoch `best.pt` holds, on the split that chose it
    best_epoch: int | None = None
    decided_on: str | None = None  # "validation" or "test": the split behind best.pt and the LR schedule
    best_test_acc: float | None = None  # test accuracy at best_epoch
    final_test_acc: float | None = None
    final_test_acc_tta: float | None = None  # with --tta: flip test-time augmentation's accuracy
    wall_seconds: float | None = None
    error: str | None = None  # status FAILED: the one-line reason
    stopped_at: dict[str, int] | None = None  # status INTERRUPTED mid-epoch: {"epoch", "step"}
    # torchrun only: process count, whether the replicas ended identical, their digests
    processes: int | None = None
    weights_in_sync: bool | None = None
    weight_digests: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunSummary:
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in raw.items() if k in names}
        known["status"] = Status.parse(raw.get("status"))
        return cls(**known, extra={k: v for k, v in raw.items() if k not in names})

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "extra" or value is None:
                continue
            out[f.name] = value.value if isinstance(value, Status) else value
        return {**out, **self.extra}

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED


@dataclass
class DataRecord:
    """config.json's `data`: which prepared data a run was trained on (resume refuses other data)."""

    data_dir: str
    source: str
    official: bool
    train_mean: list[float]
    train_std: list[float]
    classes: list[str]
    sha256: dict[str, str]
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> DataRecord:
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: raw[k] for k in names if k in raw}
        return cls(**known, extra={k: v for k, v in raw.items() if k not in names})

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**out, **self.extra}
