"""The normalisation study's read side: one overlay figure and one table from several runs.

A compare folder (layout and compare.json: common/compare_folder.py) is written by
`python cli.py compare`; this module only reads finished epochs from each run's metrics.csv, so it
also works on a comparison that is still being trained or was interrupted. It writes
comparison.png, comparison.json ({"rows": [...], "settings": {...}}) and comparison.md beside
compare.json, and reads comparison.json back for the report.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analysis.figures import NORM_LABELS
from common import compare_folder
from common.atomic import write_json, write_text
from common.compare_folder import CompareRecord
from common.errors import UserError
from common.format import duration, percent
from common.rundir import RunDir

TABLE_COLUMNS = (("norm", "norm"), ("shortcut_norm", "shortcut norm"), ("best_test_acc", "best test acc"), ("best_epoch", "best epoch"),
                 ("final_test_acc", "final test acc"), ("final_train_acc", "final train acc"),
                 ("epochs_done", "epochs"), ("wall_seconds", "wall time"), ("img_per_s", "train img/s"))


@dataclass
class ComparisonRow:
    """One norm's line of comparison.json. Read back tolerantly (every number may be absent), as the
    file may come from an older version or be edited by hand."""

    norm: str
    run: str | None = None  # the run folder, as compare.json names it
    status: str | None = None
    epochs_done: int | None = None
    best_test_acc: float | None = None
    best_epoch: int | None = None
    final_test_acc: float | None = None
    final_train_acc: float | None = None
    wall_seconds: float | None = None
    img_per_s: float | None = None  # mean training throughput over the finished epochs
    shortcut_norm: str | None = None  # the 3 projection shortcuts' norm (the main path's = "same")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ComparisonRow:
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in raw.items() if k in names}
        known["norm"] = str(raw.get("norm", "?"))
        return cls(**known)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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


def compare_runs(folder: str | Path, record: CompareRecord | None = None) -> dict[str, RunDir]:
    """norm → RunDir, in the order the comparison lists them; relative paths are inside folder."""
    record = record if record is not None else compare_folder.read_compare(folder)
    return {norm: RunDir(path) for norm, path in compare_folder.run_paths(folder, record).items()}


def run_row(key: str, run: RunDir) -> dict[str, Any] | None:
    """One table row from a run's finished epochs; None when it has not finished one."""
    metrics = run.read_metrics()
    if not metrics:
        return None
    best = max(metrics, key=lambda r: r["test_acc"])  # first epoch reaching the best, as training records
    last = metrics[-1]
    summary = run.read_summary()
    wall = summary.wall_seconds
    if wall is None:
        wall = sum(r["seconds"] for r in metrics)
    model = run.train_config().model
    norm = key if key in NORM_LABELS else model.norm
    return ComparisonRow(
        shortcut_norm=model.norm if model.shortcut_norm == "same" else model.shortcut_norm,
        norm=norm, run=str(run.path), status=summary.status.value, epochs_done=int(last["epoch"]),
        best_test_acc=best["test_acc"], best_epoch=int(best["epoch"]), final_test_acc=last["test_acc"],
        final_train_acc=last["train_acc"], wall_seconds=float(wall),
        img_per_s=sum(r["img_per_s"] for r in metrics) / len(metrics)).to_dict()


def _cell(key: str, value: Any) -> str:
    if key.endswith("_acc"):
        return percent(value)
    if key == "wall_seconds":
        return duration(value, compact=True)
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


def read_table(folder: str | Path) -> list[ComparisonRow] | None:
    """comparison.json's rows; None when the file is missing or is not such a table."""
    try:
        raw = json.loads(compare_folder.table_json_path(folder).read_text())
    except (OSError, ValueError):
        return None
    rows = raw.get("rows") if isinstance(raw, dict) else None
    if not isinstance(rows, list):
        return None
    return [ComparisonRow.from_dict(r) for r in rows if isinstance(r, dict)]


def write_comparison(folder: str | Path) -> ComparisonResult:
    """(Re)write comparison.png/.json/.md from the runs' finished epochs."""
    from analysis.figures import comparison_figure, save_figure

    folder = Path(folder)
    record = compare_folder.read_compare(folder)
    rows, series = [], {}
    for key, run in compare_runs(folder, record).items():
        row = run_row(key, run)
        if row is not None:
            rows.append(row)
            series[key] = run.read_metrics()
    if not rows:
        raise UserError(f"no run in {folder} has finished an epoch yet; resume it with "
                        f"`python cli.py compare --run {folder}`")
    settings = record.settings
    bits = [f"{len(rows)} norms", f"seed {settings['seed']}" if "seed" in settings else "",
            f"first {settings['subset']:,} train images" if settings.get("subset") else ""]
    figure = save_figure(comparison_figure(series, "ResNet-18 on CIFAR-10 by normalisation — "
                                           + ", ".join(b for b in bits if b)),
                         compare_folder.figure_path(folder))
    table_md = format_table(rows)
    json_path, md_path = compare_folder.table_json_path(folder), compare_folder.table_md_path(folder)
    write_json(json_path, {"rows": rows, "settings": settings})
    write_text(md_path, table_md + "\n")
    return ComparisonResult(folder, rows, figure, json_path, md_path, table_md)
