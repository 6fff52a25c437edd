"""Shared plotting plumbing and the confusion-matrix figure.

Figures are built on `matplotlib.figure.Figure` with an explicit Agg canvas, never pyplot: no GUI
backend is touched, no global figure state leaks between calls, and it works headless.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from common.atomic import atomic_path

DPI = 110
FONT = 9  # pt; >= 8 keeps titles legible at the saved size


def new_figure(width_in: float, height_in: float, layout: str | None = None):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=DPI, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str | Path) -> Path:
    """Write a PNG atomically (the temp name ends in .tmp, so the format is given explicitly)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        # zlib level 3: PNG encoding took 0.35 s per 1300x1100 figure at the default 6, for
        # files only ~10% smaller.
        fig.savefig(tmp, format="png", dpi=DPI, facecolor="white", pil_kwargs={"compress_level": 3})
    return path


def curves_figure(rows: list[dict[str, float]], title: str = ""):
    """Train (dashed) vs test (solid) loss and accuracy per epoch, LR drops dotted: the run's
    curves.png (written by training) and the report's stand-in when that file is missing."""
    from matplotlib.ticker import MaxNLocator

    fig = new_figure(10, 3.8, layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    epochs = [r["epoch"] for r in rows]
    drops = [r["epoch"] for prev, r in zip(rows, rows[1:]) if r["lr"] < prev["lr"] * 0.999]
    for ax, key, scale, label in ((ax_loss, "loss", 1, "cross-entropy loss"), (ax_acc, "acc", 100, "accuracy (%)")):
        ax.plot(epochs, [scale * r[f"train_{key}"] for r in rows], "o--", color="tab:blue", label="train")
        ax.plot(epochs, [scale * r[f"test_{key}"] for r in rows], "o-", color="tab:orange", label="test")
        for i, e in enumerate(drops):
            # LR in row e is the LR used during epoch e, so the drop happened before it.
            ax.axvline(e - 0.5, color="grey", linestyle=":", label="LR drop" if i == 0 else None)
        ax.set_xlabel("epoch", fontsize=FONT + 1)
        ax.set_ylabel(label, fontsize=FONT + 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=FONT)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=FONT)
    ax_loss.set_title("Loss", fontsize=FONT + 1)
    ax_acc.set_title("Accuracy", fontsize=FONT + 1)
    if title:
        fig.suptitle(title, fontsize=FONT + 2)
    return fig


def plot_confusion_matrix(matrix: np.ndarray, classes: Sequence[str], path: str | Path,
                          title: str) -> Path:
    """Counts in every cell, coloured by the row-normalised fraction.

    Colouring by row fraction makes classes with different test counts comparable and shows
    where each true class goes; the printed counts keep the absolute numbers.
    """
    from matplotlib import colormaps

    matrix = np.asarray(matrix)
    k = len(classes)
    totals = matrix.sum(axis=1, keepdims=True)
    frac = np.divide(matrix, totals, out=np.zeros(matrix.shape, dtype=np.float64), where=totals > 0)

    fig = new_figure(0.62 * k + 3.2, 0.55 * k + 1.9, layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(frac, cmap=colormaps["Blues"], vmin=0.0, vmax=1.0, interpolation="nearest")
    digits = len(str(int(matrix.max()))) if matrix.size else 1
    size = FONT if digits <= 4 else FONT - 1
    for i in range(k):
        for j in range(k):
            colour = "white" if frac[i, j] > 0.55 else "black"
            ax.text(j, i, f"{int(matrix[i, j])}", ha="center", va="center", fontsize=size, color=colour)
    ax.set_xticks(range(k), labels=list(classes), rotation=40, ha="right", rotation_mode="anchor",
                  fontsize=FONT)
    ax.set_yticks(range(k), labels=[f"{c} ({int(n)})" for c, n in zip(classes, totals[:, 0])],
                  fontsize=FONT)
    ax.tick_params(length=0)
    ax.set_xlabel("predicted class", fontsize=FONT + 1)
    ax.set_ylabel("true class (test images)", fontsize=FONT + 1)
    ax.set_title(title, fontsize=FONT + 1)
    cb = fig.colorbar(im, ax=ax, shrink=0.9, pad=0.02)
    cb.set_label("fraction of the true class (row-normalised)", fontsize=FONT)
    cb.ax.tick_params(labelsize=FONT - 1)
    return save_figure(fig, path)
