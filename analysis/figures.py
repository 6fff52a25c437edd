"""Analysis figures: the confusion matrix, the norm comparison and the report's throughput chart.

The plumbing (new_figure, save_figure, figure_png) and the training-curves figure live in
common/figures.py, which training may import too; they are re-exported here for analysis code.
Every builder returns or saves a figure through those helpers, so files and embedded PNGs share
one encoder setting.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.figures import DPI, FONT, curves_figure, figure_png, new_figure, save_figure

__all__ = ["DPI", "FONT", "NORM_COLOURS", "NORM_LABELS", "comparison_figure", "curves_figure", "figure_png",
           "new_figure", "plot_confusion_matrix", "save_figure", "throughput_figure"]

NORM_LABELS = {"batch": "BatchNorm", "group": "GroupNorm", "layer": "LayerNorm (GroupNorm(1,C))"}
# Fixed colours so a norm looks the same in every figure (matplotlib's tab10 blue/orange/green).
NORM_COLOURS = {"batch": "#1f77b4", "group": "#ff7f0e", "layer": "#2ca02c"}


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


def throughput_figure(rows: list[dict[str, float]]) -> Any:
    """Seconds per epoch and training images per second per epoch (the report's benchmark section)."""
    from matplotlib.ticker import MaxNLocator

    fig = new_figure(10, 3.0, layout="constrained")
    ax_s, ax_r = fig.subplots(1, 2)
    epochs = [r["epoch"] for r in rows]
    width = 0.6 if len(rows) > 1 else 0.4
    ax_s.bar(epochs, [r["seconds"] for r in rows], width=width, color="tab:blue")
    ax_s.set_ylabel("seconds", fontsize=FONT + 1)
    ax_s.set_title("Wall time per epoch (train + test pass)", fontsize=FONT + 1)
    ax_r.bar(epochs, [r["img_per_s"] for r in rows], width=width, color="tab:green")
    ax_r.set_ylabel("training images / s", fontsize=FONT + 1)
    ax_r.set_title("Training throughput per epoch", fontsize=FONT + 1)
    for ax in (ax_s, ax_r):
        ax.set_xlabel("epoch", fontsize=FONT + 1)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3, axis="y")
        ax.tick_params(labelsize=FONT)
        if len(rows) == 1:
            ax.set_xlim(epochs[0] - 1, epochs[0] + 1)
    return fig


def comparison_figure(series: Mapping[str, Sequence[list[dict[str, float]]]], title: str) -> Any:
    """Loss and accuracy against epoch: one colour per norm, train dashed, test solid.

    `series` maps each norm to its runs' metrics rows (one run per seed). A norm with one run is drawn
    as it is; with several, the curve is the mean over the runs that reached each epoch and a shaded
    band spans their minimum to maximum (a legend entry says over how many seeds)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    fig = new_figure(10, 4.2)
    ax_loss, ax_acc = fig.subplots(1, 2)
    handles: list[Any] = []
    counts = sorted({len(runs) for runs in series.values() if runs})
    for key, runs in series.items():
        runs = [rows for rows in runs if rows]
        if not runs:
            continue
        colour = NORM_COLOURS.get(key)
        epochs = sorted({int(r["epoch"]) for rows in runs for r in rows})
        # Markers (hollow = train, filled = test) keep a 1-epoch comparison readable: no lines then.
        marker = "o" if len(epochs) < 12 else None
        for ax, metric, scale in ((ax_loss, "loss", 1.0), (ax_acc, "acc", 100.0)):
            for split, style, face, alpha in (("train", "--", "white", 0.08), ("test", "-", None, 0.18)):
                values = _per_epoch(runs, epochs, f"{split}_{metric}", scale)
                mean = [float(np.mean(v)) if v else np.nan for v in values]
                ax.plot(epochs, mean, style, color=colour, marker=marker, markersize=5,
                        **({"markerfacecolor": face} if face else {}))
                if len(runs) > 1:
                    ax.fill_between(epochs, [min(v) if v else np.nan for v in values],
                                    [max(v) if v else np.nan for v in values], color=colour, alpha=alpha, lw=0)
        label = NORM_LABELS.get(key, key)
        handles.append(Line2D([], [], color=colour, lw=2, label=label if len(runs) == 1 else f"{label} (mean)"))
    handles += [Line2D([], [], color="0.3", ls="--", marker="o", markerfacecolor="white", label="train"),
                Line2D([], [], color="0.3", marker="o", label="test")]
    if counts and counts[-1] > 1:
        span = str(counts[-1]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
        handles.append(Patch(color="0.3", alpha=0.25, label=f"band: min–max over {span} seeds"))
    last = int(max((r["epoch"] for runs in series.values() for rows in runs for r in rows), default=1))
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.set_xlim(0.5, last + 0.5)
        if last <= 20:
            ax.set_xticks(range(1, last + 1))
        else:
            ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(title, fontsize=10)
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07 if len(handles) <= 6 else 0.11, 1, 1))
    return fig


def _per_epoch(runs: Sequence[list[dict[str, float]]], epochs: list[int], key: str, scale: float) -> list[list[float]]:
    """For each epoch, the finite values of `key` (times scale) of the runs that reached it."""
    by_epoch: dict[int, list[float]] = {e: [] for e in epochs}
    for rows in runs:
        for r in rows:
            value = r.get(key)
            if isinstance(value, (int, float)) and np.isfinite(value):
                by_epoch[int(r["epoch"])].append(scale * float(value))
    return [by_epoch[e] for e in epochs]
