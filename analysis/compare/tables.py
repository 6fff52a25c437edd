"""The normalisation study's read side: one overlay figure and the tables from several runs.

A compare folder (layout and compare.json: common/compare_folder.py) is written by
`python cli.py compare`; this module only reads finished epochs from each run's metrics.csv, so it
also works on a comparison that is still being trained or was interrupted. It writes
comparison.png, comparison.json and comparison.md beside compare.json, and reads comparison.json
back for the report:

    {"rows": [...],               one per run (ComparisonRow)
     "settings": {...},           compare.json's settings
     "seed_summary": [...],       several seeds only: per norm, mean ± sd over its finished runs
     "paired_differences": [...], several seeds only: A − B per pair of norms, 95% t-interval, verdict
     "interval": "...",           several seeds only: what the interval is (seed_stats.INTERVAL_NOTE)
     "left_out": [...]}           runs not finished, so not in the seed statistics (when any)

Runs are grouped by their own config (model.norm, run.seed), never by compare.json's keys. A run's
"best" epoch is the best-validation-accuracy epoch when metrics.csv has finite val_acc values, else
the best-test-accuracy epoch; `best_test_acc` is the test accuracy at that epoch, so with a
validation split the test set decides nothing, and `chosen_on` says which split chose it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from analysis.compare.stats import (
    INTERVAL_NOTE,
    METRIC_TITLES,
    NO_DIFFERENCE,
    finite_number,
    paired_differences,
    seed_summary,
)
from common import compare_folder
from common.atomic import write_json, write_text
from common.compare_folder import CompareRecord
from common.errors import UserError
from common.format import MISSING, duration, percent
from common.rundir import RunDir

TABLE_COLUMNS = (("norm", "norm"), ("shortcut_norm", "shortcut norm"), ("best_test_acc", "best test acc"),
                 ("best_epoch", "best epoch"), ("chosen_on", "chosen on"),
                 ("final_test_acc", "final test acc"), ("final_train_acc", "final train acc"),
                 ("epochs_done", "epochs"), ("wall_seconds", "wall time"), ("img_per_s", "train img/s"))
SEED_COLUMN = ("seed", "seed")  # after "norm" when the comparison has several seeds
VALIDATION, TEST = "validation", "test"  # the split that chose a run's best epoch
BEST_NOTE = ("best test acc: test accuracy at the best epoch, which the validation accuracy chose where "
             "the run held out a validation split (the test set then decides nothing), else the test accuracy.")


@dataclass
class ComparisonRow:
    """One run's line of comparison.json. Read back tolerantly (every number may be absent), as the
    file may come from an older version or be edited by hand."""

    norm: str
    run: str | None = None  # the run folder
    key: str | None = None  # its name in compare.json's runs ("batch", "batch-seed1", ...)
    seed: int | None = None  # the run's own run.seed
    status: str | None = None
    epochs_done: int | None = None
    best_test_acc: float | None = None  # test accuracy at the best epoch (see chosen_on)
    best_epoch: int | None = None
    chosen_on: str | None = None  # "validation" (best val_acc) or "test" (best test_acc, no validation split)
    best_val_acc: float | None = None  # validation accuracy at the best epoch (chosen on validation only)
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
    table_md: str  # everything comparison.md holds (what the CLI prints)
    seed_summary: list[dict[str, Any]] = field(default_factory=list)  # empty with one seed
    paired_differences: list[dict[str, Any]] = field(default_factory=list)  # empty with one seed

    def table(self) -> str:
        """The per-run table alone (table_md has the statistics over seeds too)."""
        return format_table(self.rows, len({r.get("seed") for r in self.rows}) > 1)


def compare_runs(folder: str | Path, record: CompareRecord | None = None) -> dict[str, RunDir]:
    """compare.json key → RunDir, in the order the comparison lists them; relative paths are inside folder."""
    record = record if record is not None else compare_folder.read_compare(folder)
    return {key: RunDir(path) for key, path in compare_folder.run_paths(folder, record).items()}


def _finite(value: Any) -> bool:
    return finite_number(value) is not None


def best_epoch(metrics: list[dict[str, float]]) -> tuple[dict[str, float], str]:
    """The epoch that counts and the split that chose it: the first epoch reaching the best finite
    val_acc ("validation"), else the first reaching the best test_acc ("test")."""
    validated = [r for r in metrics if _finite(r.get("val_acc"))]
    if validated:
        return max(validated, key=lambda r: r["val_acc"]), VALIDATION
    return max(metrics, key=lambda r: r["test_acc"]), TEST


def run_row(key: str, run: RunDir, metrics: list[dict[str, float]] | None = None) -> dict[str, Any] | None:
    """One table row from a run's finished epochs; None when it has not finished one."""
    metrics = run.read_metrics() if metrics is None else metrics
    if not metrics:
        return None
    best, chosen_on = best_epoch(metrics)
    last = metrics[-1]
    summary = run.read_summary()
    wall = summary.wall_seconds
    if wall is None:
        wall = sum(r["seconds"] for r in metrics)
    cfg = run.train_config()
    model = cfg.model
    return ComparisonRow(
        shortcut_norm=model.norm if model.shortcut_norm == "same" else model.shortcut_norm,
        norm=model.norm, run=str(run.path), key=key, seed=cfg.run.seed, status=summary.status.value,
        epochs_done=int(last["epoch"]), best_test_acc=best["test_acc"], best_epoch=int(best["epoch"]),
        chosen_on=chosen_on, best_val_acc=best["val_acc"] if chosen_on == VALIDATION else None,
        final_test_acc=last["test_acc"], final_train_acc=last["train_acc"], wall_seconds=float(wall),
        img_per_s=sum(r["img_per_s"] for r in metrics) / len(metrics)).to_dict()


def _cell(key: str, value: Any) -> str:
    if value is None:
        return MISSING
    if key.endswith("_acc"):
        return percent(value)
    if key == "wall_seconds":
        return duration(value, compact=True)
    if key == "img_per_s":
        return f"{value:,.0f}"
    return str(value)


def table_columns(several_seeds: bool) -> tuple[tuple[str, str], ...]:
    return (TABLE_COLUMNS[0], SEED_COLUMN, *TABLE_COLUMNS[1:]) if several_seeds else TABLE_COLUMNS


def format_table(rows: list[dict[str, Any]], several_seeds: bool = False) -> str:
    """The per-run table as GitHub markdown; also reads well printed in a terminal."""
    columns = table_columns(several_seeds)
    header = "| " + " | ".join(title for _, title in columns) + " |"
    rule = "|" + "|".join("---" if k in ("norm", "chosen_on") else "---:" for k, _ in columns) + "|"
    lines = [header, rule]
    for row in rows:
        lines.append("| " + " | ".join(_cell(k, row.get(k)) for k, _ in columns) + " |")
    return "\n".join(lines)


# ---- statistics over seeds, as text ----------------------------------------------------------------

def mean_sd_text(stat: dict[str, Any] | None, metric: str) -> str:
    """"52.10% ± 0.50%" (accuracy) or "3m01.5s ± 2.1s" (wall time); sd "—" when undefined (n < 2)."""
    if not isinstance(stat, dict) or not _finite(stat.get("mean")):
        return MISSING
    mean, sd = stat["mean"], stat.get("sd")
    if metric == "wall_seconds":
        return f"{duration(mean, compact=True)} ± " + (f"{sd:.1f}s" if _finite(sd) else MISSING)
    return f"{percent(mean)} ± " + (percent(sd) if _finite(sd) else MISSING)


def points(x: Any) -> str:
    """A difference of two accuracies in percentage points, signed: "+1.23 pp"."""
    return f"{100 * x + 0.0:+.2f} pp" if _finite(x) else MISSING


def interval_text(low: Any, high: Any) -> str:
    if not (_finite(low) and _finite(high)):
        return MISSING
    return f"[{100 * low + 0.0:+.2f}, {100 * high + 0.0:+.2f}] pp"


def seed_count_text(summary: list[dict[str, Any]]) -> str:
    counts = sorted({int(s.get("n") or 0) for s in summary})
    if not counts:
        return "0 seeds"
    span = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    return f"{span} seed" + ("" if counts == [1] else "s")


def format_seed_summary(summary: list[dict[str, Any]]) -> str:
    """Per norm: mean ± sd over its seeds, as markdown (a heading line, then the table)."""
    metrics = ("final_test_acc", "best_test_acc", "wall_seconds")
    lines = [f"mean ± sd over {seed_count_text(summary)} (sample sd; — with one seed):", "",
             "| norm | seeds | " + " | ".join(METRIC_TITLES[m] for m in metrics) + " |",
             "|---|---:|" + "---:|" * len(metrics)]
    for s in summary:
        lines.append(f"| {s.get('norm', '?')} | {s.get('n', MISSING)} | "
                     + " | ".join(mean_sd_text(s.get(m), m) for m in metrics) + " |")
    return "\n".join(lines)


def format_paired_differences(diffs: list[dict[str, Any]]) -> str:
    """Mean paired difference A − B per pair and metric, its 95% interval and the verdict, as markdown."""
    lines = ["paired differences A − B over the seeds both norms share:", "",
             "| A − B | metric | seeds | mean difference | 95% interval | verdict |",
             "|---|---|---:|---:|---:|---|"]
    for d in diffs:
        lines.append(f"| {d.get('a', '?')} − {d.get('b', '?')} | {METRIC_TITLES.get(d.get('metric', ''), d.get('metric'))} "
                     f"| {d.get('n', MISSING)} | {points(d.get('mean'))} | {interval_text(d.get('low'), d.get('high'))} "
                     f"| {d.get('verdict') or NO_DIFFERENCE} |")
    lines += ["", f"interval: {INTERVAL_NOTE}."]
    return "\n".join(lines)


def format_all(rows: list[dict[str, Any]], several_seeds: bool, summary: list[dict[str, Any]],
               diffs: list[dict[str, Any]], left_out: list[dict[str, Any]]) -> str:
    """comparison.md: the per-run table, then (several seeds) the seed summary and the paired differences."""
    parts = [format_table(rows, several_seeds)]
    if any(r.get("chosen_on") == VALIDATION for r in rows) or several_seeds:
        parts.append(BEST_NOTE)
    if several_seeds:
        parts += [format_seed_summary(summary), format_paired_differences(diffs)]
        if left_out:
            parts.append("left out of the seed statistics (not finished): "
                         + ", ".join(f"{r['key']} ({r['status']})" for r in left_out))
    return "\n\n".join(parts)


def read_comparison(folder: str | Path) -> dict[str, Any] | None:
    """comparison.json as a dict; None when the file is missing or is not such a table."""
    try:
        raw = json.loads(compare_folder.table_json_path(folder).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("rows"), list):
        return None
    return raw


def read_table(folder: str | Path) -> list[ComparisonRow] | None:
    """comparison.json's rows; None when the file is missing or is not such a table."""
    raw = read_comparison(folder)
    if raw is None:
        return None
    return [ComparisonRow.from_dict(r) for r in raw["rows"] if isinstance(r, dict)]


def has_several_seeds(rows: list[dict[str, Any]], settings: dict[str, Any]) -> bool:
    """compare.json asked for several seeds, or the runs were trained with more than one."""
    asked = settings.get("seeds")
    return (isinstance(asked, list) and len(asked) > 1) or len({r.get("seed") for r in rows}) > 1


def figure_series(rows: list[dict[str, Any]], curves: list[list[dict[str, float]]],
                  several: bool) -> dict[str, list[list[dict[str, float]]]]:
    """norm → its runs' metrics for the figure. With several seeds, a norm with finished runs is drawn
    from those only (the runs its statistics count); otherwise every run that finished an epoch."""
    series: dict[str, list[list[dict[str, float]]]] = {}
    for norm in dict.fromkeys(r["norm"] for r in rows):
        mine = [(r, c) for r, c in zip(rows, curves) if r["norm"] == norm]
        finished = [c for r, c in mine if r.get("status") == "finished"]
        series[norm] = finished if several and finished else [c for _, c in mine]
    return series


def _title(norms: list[str], seeds: list[Any], settings: dict[str, Any]) -> str:
    if len(seeds) > 1:
        seed_bit = "seeds " + ", ".join(str(s) for s in seeds)
    elif "seed" in settings:
        seed_bit = f"seed {settings['seed']}"
    else:
        seed_bit = f"seed {seeds[0]}" if seeds and seeds[0] is not None else ""
    bits = [f"{len(norms)} norms", seed_bit,
            f"first {settings['subset']:,} train images" if settings.get("subset") else ""]
    return "ResNet-18 on CIFAR-10 by normalisation — " + ", ".join(b for b in bits if b)


def write_comparison(folder: str | Path) -> ComparisonResult:
    """(Re)write comparison.png/.json/.md from the runs' finished epochs."""
    from analysis.figures import comparison_figure, save_figure

    folder = Path(folder)
    record = compare_folder.read_compare(folder)
    rows: list[dict[str, Any]] = []
    curves: list[list[dict[str, float]]] = []
    for key, run in compare_runs(folder, record).items():
        metrics = run.read_metrics()
        row = run_row(key, run, metrics)
        if row is not None:
            rows.append(row)
            curves.append(metrics)
    if not rows:
        raise UserError(f"no run in {folder} has finished an epoch yet; resume it with "
                        f"`python cli.py compare --run {folder}`")
    settings = record.settings
    several = has_several_seeds(rows, settings)
    series = figure_series(rows, curves, several)
    seeds = settings["seeds"] if isinstance(settings.get("seeds"), list) else \
        sorted({r["seed"] for r in rows if r.get("seed") is not None})
    figure = save_figure(comparison_figure(series, _title(list(series), seeds, settings)),
                         compare_folder.figure_path(folder))
    out: dict[str, Any] = {"rows": rows, "settings": settings}
    summary: list[dict[str, Any]] = []
    diffs: list[dict[str, Any]] = []
    left_out: list[dict[str, Any]] = []
    if several:
        counted = [r for r in rows if r.get("status") == "finished"]
        left_out = [{"key": r["key"], "run": r["run"], "status": r["status"]} for r in rows
                    if r.get("status") != "finished"]
        order = list(dict.fromkeys([*map(str, record.norms), *(r["norm"] for r in rows)]))
        summary, diffs = seed_summary(counted), paired_differences(counted, order)
        out.update(seed_summary=summary, paired_differences=diffs, interval=INTERVAL_NOTE)
        if left_out:
            out["left_out"] = left_out
    table_md = format_all(rows, several, summary, diffs, left_out)
    json_path, md_path = compare_folder.table_json_path(folder), compare_folder.table_md_path(folder)
    write_json(json_path, out)
    write_text(md_path, table_md + "\n")
    return ComparisonResult(folder, rows, figure, json_path, md_path, table_md, summary, diffs)
