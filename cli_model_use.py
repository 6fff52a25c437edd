"""The `predict` and `export` commands' bodies: call the library, print the results.

CLI glue, so it lives beside cli.py (like cli_analysis.py) and the library never imports typer.
They catch nothing: a UserError reaches cli.py's `user_errors` decorator and becomes one red line
with its exit status (2, or 1 for predict's PartialFailure: some files skipped, the rest predicted).
`echo` / `err` are parameters so tests can collect the output.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import typer

from common.rundir import RunDir

Echo = Callable[[str], None]


def _err(message: str) -> None:
    typer.echo(message, err=True)


def predict_command(paths: Sequence[str | Path], run: Path | None = None, top_k: int = 3, cam: bool = False,
                    layer: Sequence[int] = (), out: Path | None = None, json_path: Path | None = None,
                    which: str = "best", echo: Echo = typer.echo, err: Echo = _err):
    """The table on stdout; skipped files and notes on stderr; PartialFailure after printing."""
    from analysis.model_use.predict import PartialFailure, format_table, predict

    result = predict(paths, run, which=which, top_k=top_k, cam=cam, layers=layer, out=out, json_path=json_path,
                     log=err, skipped=err)
    echo(format_table(result))
    t = result.timings
    n = len(result.predictions)
    echo(f"{n:,} image(s) with {RunDir(result.run).weights_label(result.which)} of run {result.run} in {t['total']:.1f} s "
         f"(importing torch and loading the model {t['load']:.1f} s, reading images {t['read']:.1f} s, model {t['model']:.1f} s"
         + (f", Grad-CAM and figures {t['cams']:.1f} s" if result.cam_dir else "") + ")")
    if result.cam_dir is not None:
        echo(f"wrote {n:,} Grad-CAM figure(s) (layer {', '.join(map(str, result.layers))}) to {result.cam_dir}/")
    if result.json_path is not None:
        echo(f"wrote {result.json_path}")
    if result.failed:
        raise PartialFailure(f"{len(result.failed)} of {result.attempted} files could not be read (named above); "
                             f"the other {n} {'was' if n == 1 else 'were'} predicted")
    return result


def export_command(run: Path | None = None, fmt: str = "onnx", which: str = "best", out: Path | None = None,
                   data: Path | None = None, force: bool = False, echo: Echo = typer.echo, err: Echo = _err):
    """Export, verify, and print the file, its size, the input contract and the parity check."""
    from analysis.model_use.export import INPUT_SPEC, export_model

    result = export_model(run, fmt, which, out, data, force=force, log=err)
    what = f"ONNX opset {result.opset}" if result.format == "onnx" else "TorchScript"
    echo(f"wrote {result.path} ({result.size / 1e6:.1f} MB, {what}, from {RunDir(result.run).weights_label(result.which)} of run {result.run})")
    echo(f"input: {INPUT_SPEC}; output: logits (N, {len(result.classes)}) float32; class names in the "
         "file's metadata")
    echo(result.parity.describe())
    echo(f"took {result.seconds:.1f} s")
    return result
