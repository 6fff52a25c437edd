"""Make the analysis outputs a page needs before it is rendered, so rendering only reads.

The report shows a run's evaluation and Grad-CAM figures; when they are missing they are made
here with the same functions `evaluate` and `explain` use, into the same files (analysis/outputs.py).
A step that cannot run (e.g. the data folder is gone) is recorded as a failure for its section,
which then says so instead of showing the figure. A compare folder's comparison figure and table
are rebuilt from its runs when missing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from analysis.outputs import AnalysisFiles
from common import compare_folder
from common.errors import UserError
from common.rundir import RunDir

CAM_LAYERS = (3, 4)
CAM_METHOD = "gradcam"

Log = Callable[[str], None]


@dataclass
class Ensured:
    """What ensuring made, and for each step that failed, why (keyed by the section it feeds)."""

    made: list[Path] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)  # "evaluation" / "explain" → one sentence


def ensure_run_outputs(run: RunDir, explain_count: int = 20, log: Log = lambda m: None) -> Ensured:
    """Run `evaluate` and `explain` (layers 3 and 4, Grad-CAM) for whatever of their files is missing."""
    files = AnalysisFiles.of(run)
    ensured = Ensured()
    if not all(p.is_file() for p in files.evaluate_files()):
        from analysis.inspection.evaluate import evaluate

        log(f"report: {run.analysis_dir.name}/{files.evaluation.name} is missing; running evaluate")
        try:
            result = evaluate(run.path, log=log)
            ensured.made += [result.figure, result.json_path]
        except UserError as exc:
            ensured.failures["evaluation"] = f"per-class accuracy could not be computed: {exc}"
    if not all(p.is_file() for p in files.explain_files(CAM_METHOD, CAM_LAYERS)):
        from analysis.inspection.explain import explain

        log(f"report: Grad-CAM figures are missing; running explain for layers {', '.join(map(str, CAM_LAYERS))}")
        try:
            ensured.made += explain(run.path, layers=list(CAM_LAYERS), count=explain_count, method=CAM_METHOD,
                                    log=log).files
        except UserError as exc:
            ensured.failures["explain"] = f"Grad-CAM could not be computed: {exc}"
    return ensured


def ensure_compare_outputs(folder: Path, log: Log = lambda m: None) -> Ensured:
    """Rebuild comparison.png and comparison.json from the runs when either is missing."""
    figure, table = compare_folder.figure_path(folder), compare_folder.table_json_path(folder)
    ensured = Ensured()
    if not (figure.is_file() and table.is_file()):
        from analysis.compare.tables import write_comparison

        log(f"report: {folder.name}/{table.name} or {figure.name} is missing; rebuilding them from the runs")
        result = write_comparison(folder)
        ensured.made += [result.figure, result.json_path]
    return ensured
