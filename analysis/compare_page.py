"""A compare folder's report page: the overlay figure, the table of best / final accuracy per norm,
the shared settings, and a card per norm's run linking to its own report.

It reads compare.json (common/compare_folder.py), comparison.json/.png (analysis/comparison.py,
made beforehand by analysis/ensure.py when missing) and each run's summary.json and metrics.csv.
Links are relative to the page, so the folder can be moved as a whole. Markup comes only from
analysis/html.py.
"""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path
from typing import Any

from analysis.comparison import ComparisonRow, read_table
from analysis.html import (
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
    note,
    status_badge,
    table,
)
from analysis.outputs import REPORT_FILE, report_path
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
    rows = read_table(folder) or []
    norms = [str(n) for n in record.norms or [r.norm for r in rows]]

    def run_path(norm: str, row: ComparisonRow | None) -> Path:
        if norm in run_paths:
            return run_paths[norm]
        p = Path((row.run if row else None) or norm)
        return p if p.is_absolute() else folder / p

    accs = [r for r in rows if isinstance(r.best_test_acc, (int, float))]
    best = max(accs, key=lambda r: r.best_test_acc or 0.0) if accs else None
    settings = record.settings
    facts: list[tuple[Any, Any]] = [
        ("norms", ", ".join(norms) or "—"),
        ("best", f"{best.norm} · {percent(best.best_test_acc)}" if best else "—"),
        ("epochs", value_text(settings.get("epochs", "—"))),
        ("total wall time", duration(sum(r.wall_seconds or 0 for r in rows)) if rows else "—")]

    body: list[Raw] = []
    if fig_path.is_file():
        body.append(figure(fig_path.read_bytes(), "comparison of norms",
                           f"{fig_path.name}: train (dashed) and test (solid) per norm"))
    else:
        notes.append(f"{fig_path} is missing")
        body.append(note(f"{fig_path} is missing"))
    if rows:
        body.append(_table(rows, best, [run_path(r.norm, r) for r in rows], page, table_path.name))
    else:
        notes.append(f"{table_path} has no rows")
        body.append(note(f"{table_path} has no rows; rerun `python cli.py compare`"))

    settings_body = key_values([(k, value_text(v)) for k, v in flatten(settings)] +
                               [("created", record.created or "—")],
                               caption=f"{compare_folder.COMPARE_FILE} settings")
    by_norm = {r.norm: r for r in rows}
    cards = join(_run_card(norm, run_path(norm, by_norm.get(norm)), page, notes) for norm in norms)
    sections = [Section("comparison", "Comparison", join(body)),
                Section("settings", "Settings", settings_body),
                Section("runs", "Runs", cards or note(f"{compare_folder.COMPARE_FILE} lists no runs"))]
    subtitle = " · ".join(str(x) for x in (folder.resolve(), record.created) if x)
    return Document(f"Comparison {folder.name} · CIFAR-10 report", f"Comparison {folder.name}", subtitle, facts,
                    sections, notes)


def _table(rows: list[ComparisonRow], best: ComparisonRow | None, paths: list[Path], page: Path,
           source: str) -> Raw:
    """comparison.json as a table, each norm linking to its run, the best row highlighted."""
    body = [[r.norm, link(path.name, _href(path, page) + "/"), _or_dash(r.epochs_done),
             percent(r.best_test_acc), _or_dash(r.best_epoch), percent(r.final_test_acc),
             percent(r.final_train_acc), duration(r.wall_seconds),
             f"{r.img_per_s:,.1f}" if isinstance(r.img_per_s, (int, float)) else "—"] for r, path in zip(rows, paths)]
    return table(["norm", "run", "epochs", "best test acc", "best epoch", "final test acc", "final train acc",
                  "wall time", "img/s"], body, num=range(2, 9), row_classes=["best" if r is best else None for r in rows],
                 caption=f"{source} (best test accuracy highlighted)")


def _run_card(norm: str, path: Path, page: Path, notes: list[str]) -> Raw:
    """One norm's run: status, accuracy, epochs, wall time, its curves and a link to its report."""
    head = heading(3, f"{norm}: ", link(path.name, _href(path, page) + "/"))
    run = RunDir(path)
    if not run.config_path.is_file():
        msg = f"the {norm} run {path} is missing or not a run directory"
        notes.append(msg)
        return div(head, note(msg), cls="card")
    summary = run.read_summary()
    try:
        mrows = run.read_metrics()
    except (ValueError, TypeError, KeyError):
        mrows = []
    pairs: list[tuple[str, Any]] = [
        ("status", status_badge(summary.status.value)),
        ("best test accuracy", f"{percent(summary.best_acc)} (epoch {summary.best_epoch or '—'})"),
        ("final test accuracy", percent(mrows[-1]["test_acc"]) if mrows else "—"),
        ("epochs done", f"{len(mrows)} / {summary.epochs or '—'}"),
        ("wall time", duration(summary.wall_seconds))]
    own_report = report_path(path)
    if own_report.is_file():
        pairs.append(("full report", link(REPORT_FILE, _href(own_report, page))))
    else:
        pairs.append(("full report", code(f"python cli.py report {path}")))
    inner = key_values(pairs)
    if run.curves_path.is_file():
        inner = div(div(inner), div(figure(run.curves_path.read_bytes(), f"curves of the {norm} run",
                                           run.curves_path.name)), cls="two")
    return div(head, inner, cls="card")
