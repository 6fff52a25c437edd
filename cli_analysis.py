"""The `explain`, `evaluate` and `report` commands' bodies: call the analysis library, print the results.

CLI glue, so it lives beside cli.py and the library (analysis/) never imports typer. cli.py parses
the flags and calls these; they catch nothing, so a UserError reaches cli.py's `user_errors`
decorator and becomes one red line with exit status 2. `echo` is a parameter so tests can collect
the output.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import typer

from common.rundir import RunDir

Echo = Callable[[str], None]


def _err(message: str) -> None:
    typer.echo(message, err=True)


def explain_command(run: Path | None = None, layer: Sequence[int] = (3,), count: int = 20,
                    pick: str = "confident", seed: int = 0, target: str = "predicted",
                    method: str = "gradcam", which: str = "best", data: Path | None = None,
                    echo: Echo = typer.echo) -> None:
    from analysis.inspection.explain import explain, format_scores

    result = explain(run, layers=list(layer) or [3], count=count, pick=pick, seed=seed, target=target,
                     method=method, which=which, data_dir=data, log=_err)
    shown = len(result.indices)
    note = f" (only {shown} misclassified)" if shown < count else ""
    echo(f"explained {shown} of {result.misclassified_total:,} misclassified test images{note} with "
         f"{RunDir(result.run).weights_label(result.which)} ({result.predictions_source}); test indices: "
         f"{', '.join(map(str, result.indices))}")
    echo(format_scores(result))
    for path in result.files:
        echo(f"wrote {path}")
    t = result.timings
    imports = t.get("import_grad_cam", 0.0)
    echo(f"took {t['total'] - imports:.1f} s (CAMs {t['cams']:.1f} s, faithfulness {t['faithfulness']:.1f} s, "
         f"figures {t['gallery'] + t['figures']:.1f} s) + {imports:.1f} s importing pytorch_grad_cam")


def evaluate_command(run: Path | None = None, which: str = "best", recompute: bool = False, tta: bool = False,
                     tta_shift: int | None = None, data: Path | None = None, raw_weights: bool = False,
                     echo: Echo = typer.echo) -> None:
    from analysis.inspection.evaluate import evaluate

    result = evaluate(run, which=which, recompute=recompute, data_dir=data, tta=tta, tta_shift=tta_shift,
                      raw_weights=raw_weights, log=_err)
    echo(f"run {result.run} · {RunDir(result.run).weights_label(result.which, raw_weights)} · {result.source}")
    echo(result.table())
    if result.plain_accuracy is not None:
        echo(f"{result.tta_name} {100 * result.accuracy:.2f}% vs {100 * result.plain_accuracy:.2f}% without it "
             f"({100 * (result.accuracy - result.plain_accuracy):+.2f} points)")
    echo(f"wrote {result.figure}")
    echo(f"wrote {result.json_path}")


def report_command(run: Path | None = None, out: Path | None = None, echo: Echo = typer.echo) -> None:
    from analysis.report.report import make_report

    result = make_report(run, out, log=_err)
    for path in result.made:
        echo(f"made {path}")
    for message in result.notes:
        _err(f"note: {message}")
    what = "compare folder" if result.kind == "compare" else "run"
    echo(f"wrote {result.path} ({result.size / 1e6:.1f} MB, {result.images} images embedded, sections: "
         f"{', '.join(result.sections)}) for {what} {result.folder}")
