"""A compare folder's report page: the overlay figure, the table of best / final accuracy per run,
the shared settings, and a card per run linking to its own report. With several seeds per norm it
also shows the per-norm mean ± sd over the seeds and the paired differences between norms with
their 95% intervals and verdicts (analysis/compare/stats.py), and the figure's band.

It reads compare.json (common/compare_folder.py), comparison.json/.png (analysis/compare/tables.py,
made beforehand by analysis/report/ensure.py when missing) and each run's summary.json and metrics.csv.
Links are relative to the page, so the folder can be moved as a whole. Markup comes only from
analysis/report/html.py.
"""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path
from typing import Any

from analysis.compare.stats import INTERVAL_NOTE, METRIC_TITLES, NO_DIFFERENCE
from analysis.compare.tables import (
    BEST_NOTE,
    VALIDATION,
    ComparisonRow,
    interval_text,
    mean_sd_text,
    points,
    read_comparison,
    read_table,
    seed_count_text,
)
from analysis.outputs import REPORT_FILE, report_path
from analysis.report.html import (
    Document,
    Raw,
    Section,
    code,
    div,
    figure,
    heading,
    join,
    key_values,
    link,
    muted,
    note,
    status_badge,
    table,
)
from common import compare_folder
from common.compare_folder import CompareRecord
from common.format import duration, flatten, percent, value_text
from common.rundir import RunDir


def _href(target: Path, page: Path) -> str:
    """target relative to the page's folder, URL-quoted."""
    rel = os.path.relpath(target.resolve(), page.parent.resolve())
    return urllib.parse.quote(rel.replace(os.sep, "/"))


def _or_dash(value: Any) -> str:
    return "—" if value is None else value_text(value)


def compare_document(folder: Path, record: CompareRecord, page: Path) -> Document:
    """The page for a compare folder that will be written to `page` (links are relative to it)."""
    run_paths = compare_folder.run_paths(folder, record)
    notes: list[str] = []
    fig_path, table_path = compare_folder.figure_path(folder), compare_folder.table_json_path(folder)
    raw = read_comparison(folder) or {}
    rows = read_table(folder) or []
    summary = [s for s in raw.get("seed_summary") or [] if isinstance(s, dict)]
    diffs = [d for d in raw.get("paired_differences") or [] if isinstance(d, dict)]
    several = bool(summary) or len({r.seed for r in rows}) > 1
    norms = [str(n) for n in record.norms or list(dict.fromkeys(r.norm for r in rows))]

    def run_path(key: str, row: ComparisonRow | None) -> Path:
        if key in run_paths:
            return run_paths[key]
        p = Path((row.run if row else None) or key)
        return p if p.is_absolute() else folder / p

    settings = record.settings
    facts: list[tuple[Any, Any]] = [("norms", ", ".join(norms) or "—")]
    best: ComparisonRow | None = None
    if several:
        top = _highest_mean(summary)
        seeds = settings.get("seeds") or sorted({r.seed for r in rows if r.seed is not None})
        facts += [("seeds", value_text(seeds) if seeds else "—"),
                  ("highest mean", f"{top['norm']} · {percent(top['best_test_acc']['mean'])}" if top else "—")]
    else:
        accs = [r for r in rows if isinstance(r.best_test_acc, (int, float))]
        best = max(accs, key=lambda r: r.best_test_acc or 0.0) if accs else None
        facts.append(("best", f"{best.norm} · {percent(best.best_test_acc)}" if best else "—"))
    facts += [("epochs", value_text(settings.get("epochs", "—"))),
              ("total wall time", duration(sum(r.wall_seconds or 0 for r in rows)) if rows else "—")]

    body: list[Raw] = []
    if fig_path.is_file():
        caption = f"{fig_path.name}: train (dashed) and test (solid) per norm"
        if several:
            caption += "; the mean over seeds, shaded from the lowest to the highest seed"
        body.append(figure(fig_path.read_bytes(), "comparison of norms", caption))
    else:
        notes.append(f"{fig_path} is missing")
        body.append(note(f"{fig_path} is missing"))
    if summary:
        body.append(_seed_table(summary))
    if diffs:
        body.append(_differences_table(diffs, str(raw.get("interval") or INTERVAL_NOTE)))
    if several and not summary:
        body.append(note(f"{table_path.name} has no statistics over seeds; rebuild it with "
                         "`python cli.py report` after deleting it"))
    if rows:
        body.append(_table(rows, best, [run_path(r.key or r.norm, r) for r in rows], page, table_path.name, several))
        if several or any(r.chosen_on == VALIDATION for r in rows):
            body.append(muted(BEST_NOTE))
    else:
        notes.append(f"{table_path} has no rows")
        body.append(note(f"{table_path} has no rows; rerun `python cli.py compare`"))
    left_out = [d for d in raw.get("left_out") or [] if isinstance(d, dict)]
    if left_out:
        body.append(note("left out of the statistics over seeds (not finished): "
                         + ", ".join(f"{d.get('key', '?')} ({d.get('status', '?')})" for d in left_out)))

    settings_body = key_values([(k, value_text(v)) for k, v in flatten(settings)] +
                               [("created", record.created or "—")],
                               caption=f"{compare_folder.COMPARE_FILE} settings")
    by_key = {r.key or r.norm: r for r in rows}
    keys = list(run_paths) or norms
    cards = join(_run_card(key, run_path(key, by_key.get(key)), by_key.get(key), page, notes) for key in keys)
    sections = [Section("comparison", "Comparison", join(body)),
                Section("settings", "Settings", settings_body),
                Section("runs", "Runs", cards or note(f"{compare_folder.COMPARE_FILE} lists no runs"))]
    subtitle = " · ".join(str(x) for x in (folder.resolve(), record.created) if x)
    return Document(f"Comparison {folder.name} · CIFAR-10 report", f"Comparison {folder.name}", subtitle, facts,
                    sections, notes)


def _highest_mean(summary: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The norm with the highest mean best-epoch test accuracy (None when no norm has one)."""
    def mean(s: dict[str, Any]) -> float | None:
        stat = s.get("best_test_acc")
        value = stat.get("mean") if isinstance(stat, dict) else None
        return float(value) if isinstance(value, (int, float)) else None

    scored = [s for s in summary if mean(s) is not None]
    return max(scored, key=lambda s: mean(s) or 0.0) if scored else None


def _seed_table(summary: list[dict[str, Any]]) -> Raw:
    """Per norm: mean ± sd over its seeds of final and best-epoch test accuracy and wall time."""
    top = _highest_mean(summary)
    body = [[s.get("norm", "?"), _or_dash(s.get("n")), _or_dash(s.get("seeds")),
             mean_sd_text(s.get("final_test_acc"), "final_test_acc"),
             mean_sd_text(s.get("best_test_acc"), "best_test_acc"),
             mean_sd_text(s.get("wall_seconds"), "wall_seconds")] for s in summary]
    return table(["norm", "runs", "seeds", "final test acc", "best-epoch test acc", "wall time"], body,
                 num=range(1, 6), row_classes=["best" if s is top else None for s in summary],
                 caption=f"mean ± sd over {seed_count_text(summary)} (sample sd; — with one seed; "
                         "highest mean best-epoch test accuracy highlighted)")


def _differences_table(diffs: list[dict[str, Any]], interval: str) -> Raw:
    """A − B per pair of norms and metric: the mean paired difference, its 95% interval, the verdict."""
    body = [[f"{d.get('a', '?')} − {d.get('b', '?')}", METRIC_TITLES.get(str(d.get("metric")), str(d.get("metric"))),
             _or_dash(d.get("n")), points(d.get("mean")), interval_text(d.get("low"), d.get("high")),
             str(d.get("verdict") or NO_DIFFERENCE)] for d in diffs]
    return join([table(["A − B", "metric", "seeds", "mean difference", "95% interval", "verdict"], body,
                       num=range(2, 5), caption="paired differences over the seeds both norms share"),
                 muted(f"interval: {interval}.")])


def _table(rows: list[ComparisonRow], best: ComparisonRow | None, paths: list[Path], page: Path,
           source: str, several: bool = False) -> Raw:
    """comparison.json as a table, each run linking to its folder; one seed: the best row highlighted."""
    body = [[r.norm, *([_or_dash(r.seed)] if several else []), link(path.name, _href(path, page) + "/"),
             _or_dash(r.epochs_done), percent(r.best_test_acc), _or_dash(r.best_epoch), r.chosen_on or "—",
             percent(r.final_test_acc), percent(r.final_train_acc), duration(r.wall_seconds),
             f"{r.img_per_s:,.1f}" if isinstance(r.img_per_s, (int, float)) else "—"] for r, path in zip(rows, paths)]
    header = ["norm", *(["seed"] if several else []), "run", "epochs", "best test acc", "best epoch", "chosen on",
              "final test acc", "final train acc", "wall time", "img/s"]
    skip = {"norm", "run", "chosen on"}
    caption = f"{source}: one row per run" if several else f"{source} (best test accuracy highlighted)"
    return table(header, body, num=[i for i, h in enumerate(header) if h not in skip],
                 row_classes=["best" if r is best else None for r in rows], caption=caption)


def _run_card(key: str, path: Path, row: ComparisonRow | None, page: Path, notes: list[str]) -> Raw:
    """One run: status, accuracy, epochs, wall time, its curves and a link to its report."""
    head = heading(3, f"{key}: ", link(path.name, _href(path, page) + "/"))
    run = RunDir(path)
    if not run.config_path.is_file():
        msg = f"the {key} run {path} is missing or not a run directory"
        notes.append(msg)
        return div(head, note(msg), cls="card")
    summary = run.read_summary()
    try:
        mrows = run.read_metrics()
    except (ValueError, TypeError, KeyError):
        mrows = []
    if row is not None and row.best_test_acc is not None:
        best = f"{percent(row.best_test_acc)} (epoch {_or_dash(row.best_epoch)}, chosen on {row.chosen_on or '—'})"
    else:
        best = f"{percent(summary.best_acc)} (epoch {summary.best_epoch or '—'})"
    pairs: list[tuple[str, Any]] = [
        ("status", status_badge(summary.status.value)),
        ("best test accuracy", best),
        ("final test accuracy", percent(mrows[-1]["test_acc"]) if mrows else "—"),
        ("epochs done", f"{len(mrows)} / {summary.epochs or '—'}"),
        ("wall time", duration(summary.wall_seconds))]
    if row is not None and row.seed is not None:
        pairs.insert(1, ("seed", str(row.seed)))
    own_report = report_path(path)
    if own_report.is_file():
        pairs.append(("full report", link(REPORT_FILE, _href(own_report, page))))
    else:
        pairs.append(("full report", code(f"python cli.py report {path}")))
    inner = key_values(pairs)
    if run.curves_path.is_file():
        inner = div(div(inner), div(figure(run.curves_path.read_bytes(), f"curves of the {key} run",
                                           run.curves_path.name)), cls="two")
    return div(head, inner, cls="card")
