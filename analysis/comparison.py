"""The normalisation study's read side: one overlay figure and one table from several runs.

A compare folder is written by `python cli.py compare` (training/compare.py trains the runs);
this module only reads finished epochs from each run's metrics.csv, so it also works on a
comparison that is still being trained or was interrupted.

    <compare_dir>/
      compare.json      {"kind": "compare", "norms": [...], "runs": {norm: path}, "settings": {...}}
      comparison.png    train (dashed) and test (solid) loss and accuracy per epoch, one colour per norm
      comparison.json   {"rows": [...]}: the table below, machine-readable
      comparison.md     the table as GitHub markdown
      batch/ group/ layer/   ordinary run directories (unless --runs pointed elsewhere)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.atomic import write_json, write_text
from common.errors import UserError
from common.rundir import RunDir

COMPARE_FILE = "compare.json"
NORM_LABELS = {"batch": "BatchNorm", "group": "GroupNorm", "layer": "LayerNorm (GroupNorm(1,C))"}
# Fixed colours so a norm looks the same in every figure (matplotlib's tab10 blue/orange/green).
NORM_COLOURS = {"batch": "#1f77b4", "group": "#ff7f0e", "layer": "#2ca02c"}
TABLE_COLUMNS = (("norm", "norm"), ("best_test_acc", "best test acc"), ("best_epoch", "best epoch"),
                 ("final_test_acc", "final test acc"), ("final_train_acc", "final train acc"),
                 ("epochs_done", "epochs"), ("wall_seconds", "wall time"), ("img_per_s", "train img/s"))


@dataclass
class ComparisonResult:
    folder: Path
    rows: list[dict[str, Any]]
    figure: Path
    json_path: Path
    md_path: Path
    table_md: str

    def table(self) -> str:
        return format_table(self.rows)


def is_compare_dir(path: str | Path) -> bool:
    return (Path(path) / COMPARE_FILE).is_file()


def read_compare(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / COMPARE_FILE
    if not path.is_file():
        raise UserError(f"{folder} is not a comparison folder (no {COMPARE_FILE}); make one with "
                        "`python cli.py compare`")
    try:
        record = json.loads(path.read_text())
    except ValueError:
        raise UserError(f"{path} is not valid JSON; the comparison folder is damaged") from None
    if not isinstance(record, dict) or not isinstance(record.get("runs"), dict):
        raise UserError(f"{path} does not describe a comparison (no 'runs'); the folder is damaged")
    return record


def compare_runs(folder: str | Path, record: dict[str, Any] | None = None) -> dict[str, RunDir]:
    """norm → RunDir, in the order the comparison lists them; relative paths are inside folder."""
    folder = Path(folder)
    record = record if record is not None else read_compare(folder)
    runs = {}
    for key, rel in record["runs"].items():
        path = Path(rel)
        runs[key] = RunDir(path if path.is_absolute() else folder / path)
    return runs


def run_row(key: str, run: RunDir) -> dict[str, Any] | None:
    """One table row from a run's finished epochs; None when it has not finished one."""
    metrics = run.read_metrics()
    if not metrics:
        return None
    best = max(metrics, key=lambda r: r["test_acc"])  # first epoch reaching the best, as training records
    last = metrics[-1]
    summary = run.read_summary()
    wall = summary.get("wall_seconds")
    if wall is None:
        wall = sum(r["seconds"] for r in metrics)
    norm = run.read_config().get("train", {}).get("model", {}).get("norm", key)
    return {"norm": key if key in NORM_LABELS else norm, "run": str(run.path),
            "status": summary.get("status", "unknown"), "epochs_done": int(last["epoch"]),
            "best_test_acc": best["test_acc"], "best_epoch": int(best["epoch"]),
            "final_test_acc": last["test_acc"], "final_train_acc": last["train_acc"],
            "wall_seconds": float(wall),
            "img_per_s": sum(r["img_per_s"] for r in metrics) / len(metrics)}


def _cell(key: str, value: Any) -> str:
    if key.endswith("_acc"):
        return f"{100 * value:.2f}%"
    if key == "wall_seconds":
        minutes, secs = divmod(float(value), 60)
        return f"{int(minutes)}m{secs:04.1f}s"
    if key == "img_per_s":
        return f"{value:,.0f}"
    return str(value)


def format_table(rows: list[dict[str, Any]]) -> str:
    """GitHub markdown; also reads well printed in a terminal."""
    header = "| " + " | ".join(title for _, title in TABLE_COLUMNS) + " |"
    rule = "|" + "|".join("---" if k == "norm" else "---:" for k, _ in TABLE_COLUMNS) + "|"
    lines = [header, rule]
    for row in rows:
        lines.append("| " + " | ".join(_cell(k, row[k]) for k, _ in TABLE_COLUMNS) + " |")
    return "\n".join(lines)


def plot_comparison(series: dict[str, list[dict[str, float]]], path: Path, title: str) -> None:
    """Loss and accuracy against epoch: one colour per norm, train dashed, test solid."""
    from matplotlib.lines import Line2D

    from analysis.figures import new_figure, save_figure

    fig = new_figure(10, 4.2)
    ax_loss, ax_acc = fig.subplots(1, 2)
    handles = []
    for key, rows in series.items():
        colour = NORM_COLOURS.get(key)
        epochs = [r["epoch"] for r in rows]
        # Markers (hollow = train, filled = test) keep a 1-epoch comparison readable: no lines then.
        marker = "o" if len(rows) < 12 else None
        for ax, metric, scale in ((ax_loss, "loss", 1.0), (ax_acc, "acc", 100.0)):
            ax.plot(epochs, [scale * r[f"train_{metric}"] for r in rows], "--", color=colour, marker=marker,
                    markersize=5, markerfacecolor="white")
            ax.plot(epochs, [scale * r[f"test_{metric}"] for r in rows], "-", color=colour, marker=marker,
                    markersize=5)
        handles.append(Line2D([], [], color=colour, lw=2, label=NORM_LABELS.get(key, key)))
    handles += [Line2D([], [], color="0.3", ls="--", marker="o", markerfacecolor="white", label="train"),
                Line2D([], [], color="0.3", marker="o", label="test")]
    last = max((r["epoch"] for rows in series.values() for r in rows), default=1)
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
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    save_figure(fig, path)


def write_comparison(folder: str | Path) -> ComparisonResult:
    """(Re)write comparison.png/.json/.md from the runs' finished epochs."""
    folder = Path(folder)
    record = read_compare(folder)
    runs = compare_runs(folder, record)
    rows, series = [], {}
    for key, run in runs.items():
        row = run_row(key, run)
        if row is not None:
            rows.append(row)
            series[key] = run.read_metrics()
    if not rows:
        raise UserError(f"no run in {folder} has finished an epoch yet; resume it with "
                        f"`python cli.py compare --run {folder}`")
    settings = record.get("settings", {})
    bits = [f"{len(rows)} norms", f"seed {settings['seed']}" if "seed" in settings else "",
            f"first {settings['subset']:,} train images" if settings.get("subset") else ""]
    figure = folder / "comparison.png"
    plot_comparison(series, figure, "ResNet-18 on CIFAR-10 by normalisation — " + ", ".join(b for b in bits if b))
    table_md = format_table(rows)
    json_path, md_path = folder / "comparison.json", folder / "comparison.md"
    write_json(json_path, {"rows": rows, "settings": settings})
    write_text(md_path, table_md + "\n")
    return ComparisonResult(folder, rows, figure, json_path, md_path, table_md)
