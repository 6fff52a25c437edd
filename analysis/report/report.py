"""`report`: one self-contained HTML page for a run, or for a compare folder.

Three steps, in order: check the folder can be reported, ensure the analysis outputs the page
shows exist (analysis/report/ensure.py runs `evaluate` / `explain`, or rebuilds a compare folder's
comparison, for what is missing), then render, which only reads (analysis/report/run_page.py,
analysis/report/compare_page.py, markup from analysis/report/html.py).

Images are embedded as data: URIs, the CSS is inline and a Content-Security-Policy forbids any
fetch, so the single file opens offline. It is written atomically (default <folder>/report.html).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from analysis.outputs import REPORT_FILE, report_path
from analysis.report.html import Document, image_count, page
from common import compare_folder
from common.atomic import write_text
from common.errors import UserError
from common.rundir import RunDir, latest_run

Log = Callable[[str], None]


@dataclass
class ReportResult:
    path: Path  # the HTML file written
    kind: str  # "run" or "compare"
    folder: Path  # the run or compare folder it describes
    sections: list[str]  # section ids, in page order
    images: int  # embedded PNGs
    size: int  # bytes of the HTML file
    made: list[Path] = field(default_factory=list)  # analysis outputs created for the report
    notes: list[str] = field(default_factory=list)  # what could not be shown, and why


def make_report(target: str | Path | None = None, out: str | Path | None = None,
                runs_root: str | Path = "runs", explain_count: int = 20,
                log: Log = lambda m: None) -> ReportResult:
    """Write the HTML report for a run or compare folder (default: the newest run under runs_root)."""
    folder = _resolve(target, runs_root)
    out_path = Path(out) if out is not None else report_path(folder)
    if out_path.is_dir():
        raise UserError(f"--out {out_path} is a folder; give a file name such as {out_path / REPORT_FILE}")
    kind, doc, made = _document(folder, out_path, explain_count, log)
    footer = (f"Made by python cli.py report on {time.strftime('%Y-%m-%d %H:%M:%S')} from "
              f"{folder.resolve()}. Self-contained: every figure is embedded and the page loads "
              "nothing from the network.")
    text = page(doc, footer)
    write_text(out_path, text)
    return ReportResult(out_path, kind, folder, [s.id for s in doc.sections], image_count(text),
                        len(text.encode("utf-8")), made, doc.notes)


def _document(folder: Path, out_path: Path, explain_count: int, log: Log) -> tuple[str, Document, list[Path]]:
    """Check, ensure, render: the page's kind, its document and the analysis outputs made for it."""
    from analysis.report.ensure import ensure_compare_outputs, ensure_run_outputs

    if compare_folder.is_compare_dir(folder):
        from analysis.report.compare_page import compare_document

        record = compare_folder.read_compare(folder)
        ensured = ensure_compare_outputs(folder, log)
        return "compare", compare_document(folder, record, out_path), ensured.made

    from analysis.report.run_page import read_run, run_document

    run = RunDir(folder)
    records = read_run(run)
    ensured = ensure_run_outputs(run, explain_count, log)
    return "run", run_document(run, records, ensured.failures), ensured.made


def _resolve(target: str | Path | None, runs_root: str | Path) -> Path:
    if target is None:
        return latest_run(runs_root).path
    path = Path(target)
    compare_file = compare_folder.COMPARE_FILE
    if not path.exists():
        raise UserError(f"{path} does not exist; pass a run directory written by `python cli.py train` "
                        "or a compare folder")
    if not path.is_dir():
        raise UserError(f"{path} is a file, not a run directory; pass the folder that holds config.json "
                        f"or {compare_file}")
    if not compare_folder.is_compare_dir(path) and not RunDir(path).config_path.is_file():
        raise UserError(f"{path} is not a run directory (no config.json) nor a compare folder (no "
                        f"{compare_file}); pass a folder written by `python cli.py train` or `compare`")
    return path
