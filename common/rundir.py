"""The run directory: the one interface between training and analysis.

    runs/<name>/
      config.json            resolved TrainConfig, package versions, data manifest facts
      metrics.csv            one row per finished epoch
      summary.json           status (running / finished / interrupted / diverged), best epoch, wall time
      last.pt, best.pt       checkpoints (atomic), loadable with torch.load(weights_only=True)
      predictions_last.npz   per test index: label, prediction, probabilities (final model)
      predictions_best.npz   the same for the best model
      curves.png             loss / accuracy per epoch, LR drops marked
      analysis/              what `explain`, `evaluate` and `report` write

Everything else asks this module for paths and records; nothing here imports torch at module
level, so reading a run's config or metrics is instant.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.atomic import atomic_path, link_atomic, write_json, write_text
from common.config import TrainConfig
from common.errors import UserError
from common.records import RunSummary
from common.upgrade import upgrade_config

METRIC_FIELDS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds", "img_per_s",
                 "val_loss", "val_acc", "wall_seconds", "test_acc_tta")
# val_*: empty (read as NaN) when the run has no validation split. wall_seconds: the run's wall-clock
# time at the end of the epoch (all its processes, set-up and evaluation included), for accuracy
# against minutes; empty in runs written before it existed. test_acc_tta: flip test-time augmentation's
# accuracy where --tta scored it, else empty.
CHECKPOINT_FORMAT = 1


@dataclass
class Predictions:
    labels: np.ndarray  # (N,) int64, true class per test index
    preds: np.ndarray  # (N,) int64
    probs: np.ndarray  # (N, 10) float32, softmax
    epoch: int | None = None  # epochs finished when they were scored; None in files from before the tag

    @property
    def misclassified(self) -> np.ndarray:
        return np.flatnonzero(self.preds != self.labels)

    @property
    def accuracy(self) -> float:
        return float((self.preds == self.labels).mean()) if len(self.labels) else 0.0


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    # ---- paths -------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def curves_path(self) -> Path:
        return self.path / "curves.png"

    @property
    def analysis_dir(self) -> Path:
        return self.path / "analysis"

    @property
    def val_indices_path(self) -> Path:
        return self.path / "val_indices.npy"

    def write_val_indices(self, indices: np.ndarray) -> None:
        with atomic_path(self.val_indices_path) as tmp, open(tmp, "wb") as fh:
            np.save(fh, np.asarray(indices, dtype=np.int64))

    def read_val_indices(self) -> np.ndarray | None:
        if not self.val_indices_path.is_file():
            return None
        try:
            return np.load(self.val_indices_path, allow_pickle=False)
        except (ValueError, OSError):
            raise UserError(f"{self.val_indices_path} is damaged; the run's validation split cannot be "
                            "recovered: start a new run") from None

    def checkpoint_path(self, which: str = "last") -> Path:
        return self.path / f"{which}.pt"

    def predictions_path(self, which: str = "last") -> Path:
        return self.path / f"predictions_{which}.npz"

    def create(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create the run directory {self.path}: {exc.strerror or exc}; "
                            "choose another --run location") from None

    def remove_stale_temps(self) -> None:
        """Temp files of writes that a SIGKILL or power loss cut short (the finished files are intact)."""
        for tmp in self.path.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)

    # ---- config ------------------------------------------------------------------------------
    def write_config(self, record: dict[str, Any]) -> None:
        write_json(self.config_path, record)

    def is_project_run(self) -> bool:
        """config.json is a run record of this project (written by `train`), whatever its state."""
        try:
            raw = json.loads(self.config_path.read_text())
        except (OSError, ValueError):
            return False
        return isinstance(raw, dict) and "run_id" in raw and isinstance(raw.get("train"), dict)

    def read_config(self) -> dict[str, Any]:
        if not self.config_path.is_file():
            raise UserError(f"{self.path} is not a run directory (no config.json); pass a folder "
                            "written by `python cli.py train`")
        try:
            return upgrade_config(json.loads(self.config_path.read_text()))
        except ValueError:
            raise UserError(f"{self.config_path} is not valid JSON; the run directory is damaged") from None

    def train_config(self) -> TrainConfig:
        return TrainConfig.from_dict(self.read_config().get("train", {}))

    def weights_label(self, which: str, raw: bool = False) -> str:
        """'best.pt', or 'best.pt (EMA weights)' for a run trained with --ema, whose checkpoints'
        averaged weights are what its evaluation scored and what the analysis commands load;
        `raw`: its checkpoints' other weights, the ones the optimizer trained (evaluate --raw-weights)."""
        if not self.has_ema():
            return f"{which}.pt"
        return f"{which}.pt ({'raw weights, not the EMA' if raw else 'EMA weights'})"

    def has_ema(self) -> bool:
        """Whether the run was trained with --ema (its checkpoints hold averaged and raw weights)."""
        return self.train_config().optim.ema > 0

    # ---- metrics -----------------------------------------------------------------------------
    def read_metrics(self) -> list[dict[str, float]]:
        """metrics.csv's rows; an empty or missing cell (val_loss/val_acc of a run trained with
        --val 0, a hand-edited file) reads as NaN."""
        if not self.metrics_path.is_file():
            return []
        with open(self.metrics_path, newline="") as fh:
            rows = list(csv.DictReader(fh))

        def number(key: str, value: str | None) -> float:
            if value is None or not value.strip():
                return float("nan")
            return int(value) if key == "epoch" else float(value)

        return [{k: number(k, v) for k, v in row.items()} for row in rows]

    def write_metrics(self, rows: list[dict[str, float]]) -> None:
        # Rewritten whole (a few dozen rows) so a crash never leaves a torn line.
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=METRIC_FIELDS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(row.get(k)) for k in METRIC_FIELDS})
        write_text(self.metrics_path, buf.getvalue())

    # ---- summary -----------------------------------------------------------------------------
    def read_summary(self) -> RunSummary:
        """summary.json as a record; status UNKNOWN when it is missing or unreadable."""
        if not self.summary_path.is_file():
            return RunSummary()
        try:
            raw = json.loads(self.summary_path.read_text())
        except ValueError:
            return RunSummary()
        return RunSummary.from_dict(raw) if isinstance(raw, dict) else RunSummary()

    def write_summary(self, summary: RunSummary) -> None:
        write_json(self.summary_path, summary.to_dict())

    def update_summary(self, **fields: Any) -> None:
        """Change some fields (usually the status), keeping the rest of summary.json."""
        self.write_summary(dataclasses.replace(self.read_summary(), **fields))

    @property
    def finished(self) -> bool:
        return self.read_summary().finished

    # ---- predictions -------------------------------------------------------------------------
    def write_predictions(self, which: str, labels: np.ndarray, probs: np.ndarray, epoch: int | None = None) -> None:
        """`epoch`: the epochs finished when scored, the same number as the checkpoint's "epoch", so
        a reader can tell predictions that ran ahead of a checkpoint whose write failed."""
        arrays: dict[str, Any] = {"labels": labels.astype(np.int64), "preds": probs.argmax(1).astype(np.int64),
                                  "probs": probs.astype(np.float32)}
        if epoch is not None:
            arrays["epoch"] = np.int64(epoch)
        with atomic_path(self.predictions_path(which)) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)

    def read_predictions(self, which: str = "last") -> Predictions | None:
        path = self.predictions_path(which)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                epoch = int(z["epoch"]) if "epoch" in z.files else None
                return Predictions(z["labels"], z["preds"], z["probs"], epoch)
        except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile):
            raise UserError(f"{path} is damaged; delete it and it will be recomputed") from None

    # ---- checkpoints -------------------------------------------------------------------------
    def has_checkpoint(self, which: str = "last") -> bool:
        return self.checkpoint_path(which).is_file()

    def save_checkpoint(self, which: str, state: dict[str, Any], also_best: bool = False) -> None:
        """Write `which`.pt atomically. `also_best`: best.pt becomes a hard link to the same bytes
        (one 89 MB write instead of two, each fsynced, while every torchrun rank waits); it is put
        in place *before* last.pt, so a crash between the two leaves best.pt ahead, never behind."""
        import torch

        # Through a Python file object: given a path, torch's C++ writer reports a full disk as
        # "unexpected pos 576 vs 534"; a handle surfaces the OSError (ENOSPC) that atomic_path explains.
        with atomic_path(self.checkpoint_path(which)) as tmp:
            with open(tmp, "wb") as fh:
                try:
                    torch.save({"format": CHECKPOINT_FORMAT, **state}, fh)
                except RuntimeError as exc:
                    # ... and then its zip writer's __exit__ masks that OSError with another RuntimeError.
                    if isinstance(exc.__context__, OSError):
                        raise exc.__context__ from None
                    raise
                fh.flush()
                os.fsync(fh.fileno())
            if also_best:
                link_atomic(tmp, self.checkpoint_path("best"))

    def checkpoint_epoch(self, which: str = "last") -> int | None:
        """The epochs finished in `which`.pt (memory-mapped: the weights are not read); None when
        the file is missing or unreadable (loading it reports why)."""
        import torch

        try:
            return int(torch.load(self.checkpoint_path(which), map_location="cpu", weights_only=True,
                                  mmap=True)["epoch"])
        except Exception:  # noqa: BLE001 - any unreadable file: load_checkpoint says what is wrong
            return None

    def load_checkpoint(self, which: str = "last") -> dict[str, Any]:
        """Load without executing code (weights_only); say so clearly when it cannot be read."""
        import pickle
        import warnings

        import torch

        path = self.checkpoint_path(which)
        if not path.is_file():
            raise UserError(f"{self.path} has no {path.name}; train it first (or pass the right --run)")
        try:
            with warnings.catch_warnings():  # torch warns about pickle protocols before refusing
                warnings.simplefilter("ignore")
                state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            # weights_only admits tensors and plain containers only; anything else could run code.
            raise UserError(f"{path} is not a loadable checkpoint: it holds Python objects other than "
                            "tensors and plain values, which could run code when loaded, so it was refused; "
                            "it is corrupt or was not written by this toolkit") from None
        except (RuntimeError, EOFError, ValueError, OSError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"{path} is not a loadable checkpoint ({first[:120]}); it is corrupt or "
                            "was not written by this toolkit") from None
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT or "model" not in state:
            raise UserError(f"{path} was not written by this version of the toolkit; retrain or use "
                            "a matching version")
        run_id = self.read_config().get("run_id") if self.config_path.is_file() else None
        if run_id and state.get("run_id") and state["run_id"] != run_id:
            raise UserError(f"{path} belongs to another run (run id {state['run_id'][:8]}, this run is "
                            f"{run_id[:8]}); the run directory mixes files from different runs")
        return state


def latest_run(root: str | Path = "runs") -> RunDir:
    """The most recently modified run under root that has a config and a checkpoint."""
    root = Path(root)
    candidates = [p for p in root.glob("*") if (p / "config.json").is_file() and (p / "last.pt").is_file()] \
        if root.is_dir() else []
    if not candidates:
        raise UserError(f"no trained run found under {root}/; train one with `python cli.py train` "
                        "or pass --run DIR")
    return RunDir(max(candidates, key=lambda p: (p / "last.pt").stat().st_mtime))


def _fmt(value: float | None) -> str:
    if value is None or value != value:  # no validation split: an empty cell
        return ""
    if isinstance(value, int):
        return str(value)
    return f"{value:.6g}" if abs(value) >= 1e-4 or value == 0 else f"{value:.6e}"
