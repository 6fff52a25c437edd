"""Figure plumbing that training and analysis share: one way to make a figure, one way to save it,
and the training-curves figure (training writes curves.png; the report redraws it when missing).

It lives in common/ because training may not import analysis. Figures are built on
`matplotlib.figure.Figure` with an explicit Agg canvas, never pyplot: no GUI backend is touched,
no global figure state leaks between calls, and it works headless. matplotlib is imported inside
the functions, so importing this module stays instant.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import IO, Any, Literal

from common.atomic import atomic_path

DPI = 110
FONT = 9  # pt; >= 8 keeps titles legible at the saved size


def new_figure(width_in: float, height_in: float,
               layout: Literal["constrained", "compressed", "tight"] | None = None) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=DPI, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _write_png(fig: Any, target: str | Path | IO[bytes]) -> None:
    """The one PNG encoder setting for files and in-memory figures alike."""
    # zlib level 3: much faster to encode than the default 6, for files only slightly larger
    # (docs/BENCHMARKS.md, 'Moved from code comments'). The format is given explicitly: atomic temp
    # names end in .tmp.
    fig.savefig(target, format="png", dpi=DPI, facecolor="white", pil_kwargs={"compress_level": 3})


def save_figure(fig: Any, path: str | Path) -> Path:
    """Write a PNG atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        _write_png(fig, tmp)
    return path


def figure_png(fig: Any) -> bytes:
    """The PNG bytes of a figure, for pages that embed it instead of writing a file."""
    buf = io.BytesIO()
    _write_png(fig, buf)
    return buf.getvalue()


def _has(rows: list[dict[str, float]], key: str) -> bool:
    return any(isinstance(r.get(key), (int, float)) and math.isfinite(r[key]) for r in rows)


def curves_figure(rows: list[dict[str, float]], title: str = "", lr_drops: bool = True) -> Any:
    """Train (dashed), validation (dotted, when held out) and test (solid) loss and accuracy per
    epoch, plateau LR drops as grey lines (`lr_drops`: off for a per-step schedule, whose lr falls
    every epoch), and test accuracy against wall-clock minutes when metrics.csv has them: the run's
    curves.png (written by training) and the report's stand-in when that file is missing."""
    from matplotlib.ticker import MaxNLocator

    timed = _has(rows, "wall_seconds")
    fig = new_figure(15 if timed else 10, 3.8, layout="constrained")
    axes = fig.subplots(1, 3 if timed else 2)
    ax_loss, ax_acc = axes[0], axes[1]
    epochs = [r["epoch"] for r in rows]
    drops = [r["epoch"] for prev, r in zip(rows, rows[1:]) if r["lr"] < prev["lr"] * 0.999] if lr_drops else []
    for ax, key, scale, label in ((ax_loss, "loss", 1, "cross-entropy loss"), (ax_acc, "acc", 100, "accuracy (%)")):
        ax.plot(epochs, [scale * r[f"train_{key}"] for r in rows], "o--", color="tab:blue", label="train")
        if _has(rows, f"val_{key}"):
            ax.plot(epochs, [scale * r[f"val_{key}"] for r in rows], "s:", color="tab:green", label="validation")
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
    if timed:
        ax_time = axes[2]
        ax_time.plot([r["wall_seconds"] / 60 for r in rows], [100 * r["test_acc"] for r in rows], "o-",
                     color="tab:orange", label="test")
        ax_time.set_xlabel("wall-clock minutes", fontsize=FONT + 1)
        ax_time.set_ylabel("accuracy (%)", fontsize=FONT + 1)
        ax_time.set_title("Time to accuracy", fontsize=FONT + 1)
        ax_time.grid(alpha=0.3)
        ax_time.tick_params(labelsize=FONT)
    ax_loss.set_title("Loss", fontsize=FONT + 1)
    ax_acc.set_title("Accuracy", fontsize=FONT + 1)
    if title:
        fig.suptitle(title, fontsize=FONT + 2)
    return fig
