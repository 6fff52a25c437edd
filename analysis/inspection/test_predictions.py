"""Per-test-image predictions: read the ones training saved, or compute them with the model.

A full pass over the 10,000 CIFAR-10 test images takes minutes on a CPU (docs/BENCHMARKS.md,
'Moved from code comments'), so saved predictions are always preferred.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from analysis.loading import RunInputs, to_model_input
from common.errors import UserError
from common.rundir import Predictions

if TYPE_CHECKING:
    import torch

Log = Callable[[str], None]


@dataclass
class TTAViews:
    """How a run's test pass on this CPU scores TTA: the shift (models/tta.py), and the precision
    and memory format of the extra views as training's test pass on this CPU ran them: bf16 by
    training's own rule (common/hardware.py `cpu_bf16`), channels-last unless the run said
    --no-channels-last (training/device.py's CPU default; a test holds the two equal). So
    `evaluate --tta` on the machine that trained gets the run's number."""

    shift: int
    bf16: bool
    channels_last: bool

    def precision(self) -> contextlib.AbstractContextManager:
        import torch

        return torch.autocast("cpu", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x.contiguous()


def tta_views(inputs: RunInputs, shift: int | None = None) -> TTAViews:
    """The run's TTA on this CPU: its recorded `--tta-shift` unless `shift` is given."""
    from common.hardware import cpu_bf16

    cfg = inputs.run.train_config()
    return TTAViews(cfg.run.tta_shift if shift is None else shift, cpu_bf16(cfg.run.amp),
                    cfg.run.channels_last is not False)


def predict_probs(model, images: np.ndarray, mean: np.ndarray, std: np.ndarray,
                  batch_size: int = 500, tta: TTAViews | None = None) -> np.ndarray:
    """Softmax probabilities (N, classes) float32, batch by batch under no_grad on the CPU, fp32.

    `tta`: the softmax of the test-time-augmentation logits instead (models/tta.py), its extra
    views run as training's test pass ran them (`tta_views`), so the accuracy equals the run's.
    """
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = to_model_input(images[start:start + batch_size], mean, std)
            logits = model(x).float()
            if tta is not None:
                from models.tta import tta_logits

                logits = tta_logits(model, x, logits, tta.shift, tta.precision, tta.prepare)
            out.append(torch.softmax(logits, dim=1).numpy())
    if not out:
        raise UserError("the test set is empty; rebuild it with `prepare --force`")
    return np.concatenate(out).astype(np.float32)


def get_predictions(inputs: RunInputs, model, images: np.ndarray, labels: np.ndarray,
                    recompute: bool = False, save_if_missing: bool = True,
                    log: Log = lambda m: None) -> tuple[Predictions, str]:
    """Saved predictions when present (checked against the test labels), else a fresh pass.

    A fresh pass is written to predictions_{which}.npz only when that file is missing, so a
    `--data` override can never overwrite what training recorded. Returns (predictions, source).
    """
    path = inputs.run.predictions_path(inputs.which)
    saved = None if recompute else inputs.run.read_predictions(inputs.which)
    if saved is not None and saved.epoch is not None:
        ckpt_epoch = inputs.run.checkpoint_epoch(inputs.which)
        if ckpt_epoch is not None and ckpt_epoch != saved.epoch:
            log(f"{path.name} was scored after epoch {saved.epoch} but {inputs.which}.pt holds epoch {ckpt_epoch} "
                "(a run stopped between its writes); recomputing them")
            saved, recompute = None, True
    if saved is not None:
        _check_matches(saved, labels, path.name, inputs)
        return saved, f"saved {path.name}"

    log(f"computing predictions for {len(images):,} test images with {inputs.which}.pt on the CPU"
        + (" (a few minutes for the full test set)" if len(images) > 2000 else ""))
    probs = predict_probs(model, images, inputs.mean, inputs.std)
    fresh = Predictions(labels.astype(np.int64), probs.argmax(1).astype(np.int64), probs)
    if save_if_missing and not path.exists():
        inputs.run.write_predictions(inputs.which, fresh.labels, probs)
        log(f"wrote {path}")
    return fresh, "recomputed"


def _check_matches(pred: Predictions, labels: np.ndarray, name: str, inputs: RunInputs) -> None:
    n_classes = len(inputs.classes)
    if pred.probs.ndim != 2 or pred.probs.shape[1] != n_classes or len(pred.preds) != len(pred.labels) \
            or len(pred.probs) != len(pred.labels):
        raise UserError(f"{inputs.run.path / name} has inconsistent arrays; delete it and it will be "
                        "recomputed")
    if len(pred.labels) != len(labels):
        raise UserError(f"{inputs.run.path / name} has {len(pred.labels):,} predictions but the test "
                        f"set in {inputs.data_dir} has {len(labels):,} images; pass --data with the "
                        "folder the run was trained on, or --recompute")
    differ = int((pred.labels != labels).sum())
    if differ:
        raise UserError(f"{inputs.run.path / name} does not match the test set in {inputs.data_dir} "
                        f"(labels differ at {differ:,} of {len(labels):,} positions); pass --data with "
                        "the folder the run was trained on, or --recompute")
