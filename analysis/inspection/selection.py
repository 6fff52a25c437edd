"""Which misclassified test images to show."""

from __future__ import annotations

import numpy as np

from common.errors import UserError
from common.rundir import Predictions

PICKS = ("confident", "random")


def confidence(pred: Predictions) -> np.ndarray:
    """Probability the model gave its own prediction, per test index."""
    return pred.probs[np.arange(len(pred.preds)), pred.preds].astype(np.float64)


def select_misclassified(pred: Predictions, count: int, pick: str = "confident",
                         seed: int = 0) -> np.ndarray:
    """Test indices of up to `count` mistakes.

    "confident": the mistakes the model was surest about (they say most about what it learned
    wrong), ties broken by test index so the choice is stable. "random": a seeded sample, shown
    in test-index order, for an unbiased look.
    """
    if pick not in PICKS:
        raise UserError(f"unknown --pick {pick!r}; choose 'confident' or 'random'")
    if count < 1:
        raise UserError(f"--count must be at least 1, got {count}")
    wrong = pred.misclassified
    if len(wrong) == 0:
        raise UserError(f"no misclassified test images: all {len(pred.labels):,} predictions are "
                        "correct, so there is nothing to explain")
    k = min(count, len(wrong))
    if pick == "confident":
        conf = confidence(pred)[wrong]
        order = np.lexsort((wrong, -conf))  # last key is primary: highest confidence first
        return wrong[order[:k]].astype(np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(wrong, size=k, replace=False)).astype(np.int64)
