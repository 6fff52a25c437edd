"""`evaluate`: overall and per-class test accuracy, and where the mistakes go.

Writes <run>/analysis/confusion_matrix.png and <run>/analysis/evaluation.json (names:
analysis/outputs.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from analysis.inspection.test_predictions import get_predictions
from analysis.loading import load_model, load_test_set, open_run
from analysis.outputs import AnalysisFiles
from common.atomic import write_json
from common.errors import UserError
from common.rundir import Predictions

Log = Callable[[str], None]


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, n_classes: int) -> np.ndarray:
    """(true, predicted) counts; rows are true classes."""
    flat = np.asarray(labels, np.int64) * n_classes + np.asarray(preds, np.int64)
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


@dataclass
class EvaluationResult:
    run: Path
    which: str
    source: str  # "saved predictions_best.npz", "recomputed" or "recomputed with <tta_name>"; "… from the raw weights"
    classes: list[str]
    confusion: np.ndarray  # (K, K) int64, rows = true class
    figure: Path
    json_path: Path
    plain_accuracy: float | None = None  # with --tta: the accuracy without it, on the same images
    tta_name: str | None = None  # with --tta: which (models/tta.py), e.g. "flip TTA"

    @property
    def total(self) -> int:
        return int(self.confusion.sum())

    @property
    def correct(self) -> int:
        return int(np.trace(self.confusion))

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    @property
    def class_totals(self) -> np.ndarray:
        return self.confusion.sum(axis=1)

    @property
    def class_accuracy(self) -> np.ndarray:
        """Per true class; NaN for a class with no test images."""
        totals = self.class_totals
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(totals > 0, np.diag(self.confusion) / np.maximum(totals, 1), np.nan)

    def table(self) -> str:
        width = max(11, max(len(c) for c in self.classes) + 2)
        lines = [f"{'class':<{width}}{'correct':>9} / {'total':<7}{'accuracy':>9}"]
        for name, right, n, acc in zip(self.classes, np.diag(self.confusion), self.class_totals,
                                       self.class_accuracy):
            shown = f"{100 * acc:.2f}%" if n else "—"
            lines.append(f"{name:<{width}}{int(right):>9} / {int(n):<7}{shown:>9}")
        lines.append(f"{'overall':<{width}}{self.correct:>9} / {self.total:<7}{100 * self.accuracy:>8.2f}%")
        return "\n".join(lines)


def evaluate(run_dir: str | Path | None = None, which: str = "best", recompute: bool = False,
             data_dir: str | Path | None = None, runs_root: str | Path = "runs", tta: bool = False,
             tta_shift: int | None = None, raw_weights: bool = False, log: Log = lambda m: None) -> EvaluationResult:
    """Accuracy table, confusion matrix figure and JSON from saved (or recomputed) predictions.

    `tta`: the table, figure and JSON describe test-time-augmentation predictions (always
    computed, never saved over what training recorded): the run's own TTA (its `--tta-shift`, so
    the accuracy is the one training reported) unless `tta_shift` is given; the plain accuracy is
    reported beside them.

    `raw_weights`: for a run trained with --ema, score the weights the optimizer trained instead of
    their average (what timm reports beside its EMA model: did the average help?). Its predictions
    are always computed and never saved, since the run's saved predictions are the average's."""
    inputs = open_run(run_dir, which, data_dir, runs_root)
    ema = inputs.run.has_ema()  # reads config.json: once
    if raw_weights and not ema:
        raise UserError(f"--raw-weights: run {inputs.run.path} was trained without --ema, so its only weights are "
                        "the raw ones; drop --raw-weights")
    # Loading the model even when predictions are saved checks that the checkpoint exists and
    # matches config.json, so the numbers always belong to weights that are really there.
    model = load_model(inputs, averaged=not raw_weights)
    images, labels = load_test_set(inputs)
    pred, source = get_predictions(inputs, model, images, labels, recompute=recompute or raw_weights,
                                   save_if_missing=not raw_weights, log=log)
    plain = name = None
    if tta:
        from analysis.inspection.test_predictions import predict_probs, tta_views
        from common.config import check_tta_shift
        from models.tta import tta_name

        if tta_shift is not None:
            check_tta_shift(tta_shift)
        views = tta_views(inputs, tta_shift)
        name = tta_name(views.shift)
        log(f"computing {name} predictions for {len(images):,} test images on the CPU "
            f"({2 if views.shift == 0 else 6} passes)")
        plain = float((pred.preds == pred.labels).mean()) if len(pred.labels) else 0.0
        probs = predict_probs(model, images, inputs.mean, inputs.std, tta=views)
        pred = Predictions(labels.astype(np.int64), probs.argmax(1).astype(np.int64), probs)
        source = f"recomputed with {name}"
    if raw_weights:
        source += " from the raw weights, not the EMA"

    classes = inputs.classes
    cm = confusion_matrix(pred.labels, pred.preds, len(classes))
    files = AnalysisFiles.of(inputs.run)
    result = EvaluationResult(inputs.run.path, inputs.which, source, classes, cm,
                              files.confusion_matrix, files.evaluation, plain, name)

    from analysis.figures import plot_confusion_matrix

    plot_confusion_matrix(cm, classes, result.figure,
                          title=f"run {inputs.name}, {inputs.which}.pt{' (raw weights)' if raw_weights else ''}"
                                f"{f' + {name}' if name else ''} · accuracy "
                                f"{100 * result.accuracy:.2f}% on {result.total:,} test images")
    write_json(result.json_path, {
        "run": str(inputs.run.path), "checkpoint": f"{inputs.which}.pt", "predictions": source,
        "data_dir": str(inputs.data_dir), "test_images": result.total, "correct": result.correct,
        "accuracy": round(result.accuracy, 6), "tta": tta,
        **({"weights": "raw" if raw_weights else "ema"} if ema else {}),
        **({"tta_views": name} if name else {}),
        **({"accuracy_without_tta": round(plain, 6)} if plain is not None else {}),
        "per_class": {
            name: {"correct": int(cm[i, i]), "total": int(result.class_totals[i]),
                   "accuracy": None if result.class_totals[i] == 0 else round(float(result.class_accuracy[i]), 6)}
            for i, name in enumerate(classes)},
        "confusion_matrix": {"classes": classes, "rows": "true class", "columns": "predicted class",
                             "counts": cm.astype(int).tolist()},
    })
    return result
