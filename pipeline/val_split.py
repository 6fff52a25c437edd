"""The validation split: a fixed, class-stratified part of the training set that is never
trained on, so the plateau scheduler and the choice of best.pt need not look at the test set.

A pure function of (labels, size, seed): a resumed run, every torchrun rank and a rerun with the
same seed hold out the same images (the run directory also records them, val_indices.npy).
"""

from __future__ import annotations

import numpy as np

from common.errors import UserError

_SALT = 0x7A1_5EED  # keeps the split's random stream apart from the model's init (same --seed)


def stratified_split(labels: np.ndarray, n_val: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices), both sorted, partitioning range(len(labels)).

    Each class gives its share of `n_val` in proportion to its count (largest remainders round
    up), drawn at random within the class, so the split has the pool's class balance.
    """
    total = len(labels)
    if n_val < 0:
        raise UserError(f"--val must be >= 0, got {n_val}")
    if n_val >= total:
        raise UserError(f"--val {n_val} leaves no training images out of {total}; lower --val (or raise --subset)")
    if n_val == 0:
        return np.arange(total), np.zeros(0, dtype=np.int64)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * (n_val / total)
    share = np.floor(exact).astype(np.int64)
    for k in np.argsort(-(exact - share), kind="stable")[: n_val - int(share.sum())]:
        share[k] += 1
    rng = np.random.default_rng([seed, _SALT])
    picked = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, share)]
    val = np.sort(np.concatenate(picked)).astype(np.int64)
    train = np.setdiff1d(np.arange(total), val, assume_unique=True)
    return train, val
