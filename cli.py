#!/usr/bin/env python
"""Command line for the CIFAR-10 toolkit: prepare → train → explain / evaluate, plus benchmarks.

The CLI only parses flags into configs and calls one library function per command. Heavy imports
(torch, FFCV, matplotlib) happen inside the commands, so `--help` stays instant and commands that
never read betons never import FFCV.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable
from pathlib import Path

import typer

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common.errors import UserError  # noqa: E402  (no heavy imports behind this)

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train and explain a ResNet-18 on CIFAR-10 with an FFCV loader.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks; each compares against a baseline in the same run.")
app.add_typer(bench_app, name="bench")


def _fail(message: str, code: int = 2) -> None:
    message = " ".join(message.split())  # one line, even when it quotes a multi-line library message
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def user_errors(fn: Callable) -> Callable:
    """Turn UserError into one red line and exit 2; Ctrl-C into exit 130. Bugs keep tracebacks."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            _fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            typer.secho("interrupted", err=True)
            raise typer.Exit(130)

    return wrapper


@app.command()
@user_errors
def prepare(
    source: Path | None = typer.Option(None, help="Local cifar-10-python.tar.gz or extracted cifar-10-batches-py/ folder; default: download the official archive."),
    out: Path = typer.Option(Path("data"), help="Folder for train.beton, test.beton and manifest.json."),
    limit: int | None = typer.Option(None, help="Write only the first N images of each split (quick experiments)."),
    force: bool = typer.Option(False, help="Rewrite even when valid outputs already exist."),
) -> None:
    """Write CIFAR-10 to FFCV .beton files (validated, atomic) plus a manifest with mean/std."""
    from pipeline.prepare import prepare as run_prepare

    result = run_prepare(str(source) if source is not None else None, out, limit=limit, force=force,
                         log=lambda m: typer.echo(m, err=True))
    m = result.manifest
    counts = ", ".join(f"{s} {m['splits'][s]['count']:,}" for s in ("train", "test"))
    if result.skipped:
        typer.echo(f"{out}/ already holds valid betons ({counts}); nothing to do (use --force to rewrite)")
    else:
        kind = "official" if m["official"] else "non-official"
        typer.echo(f"wrote {out}/train.beton and test.beton ({counts}; {kind} data) "
                   f"+ {out}/manifest.json in {result.seconds:.1f} s")


def _parse_fill(fill: str | None) -> tuple[int, int, int] | None:
    if fill is None or fill == "mean":
        return None
    try:
        values = tuple(int(v) for v in fill.split(","))
    except ValueError:
        raise UserError(f"--fill must be 'mean' or three integers R,G,B in 0-255, got {fill!r}") from None
    if len(values) != 3:
        raise UserError(f"--fill must be 'mean' or three integers R,G,B in 0-255, got {fill!r}")
    return values  # type: ignore[return-value]


def _train_flags(
    data: Path = typer.Option(Path("data"), help="Folder written by `prepare`."),
    epochs: int | None = typer.Option(None, help="Epochs to train (default 40; with --resume: raise the budget)."),
    batch_size: int = typer.Option(128, help="Images per step."),
    lr: float = typer.Option(0.03, help="SGD learning rate."),
    momentum: float = typer.Option(0.9, help="SGD momentum."),
    weight_decay: float | None = typer.Option(None, help="SGD weight decay (default 5e-4; 0 in --recipe assignment)."),
    label_smoothing: float = typer.Option(0.0, help="Cross-entropy label smoothing."),
    plateau_factor: float = typer.Option(0.1, help="ReduceLROnPlateau factor (on test loss)."),
    plateau_patience: int = typer.Option(2, help="ReduceLROnPlateau patience, in epochs."),
    plateau_threshold: float = typer.Option(0.001, help="ReduceLROnPlateau relative threshold."),
    norm: str = typer.Option("layer", help="Normalisation: layer (GroupNorm(1,C)), group, batch."),
    groups: int = typer.Option(32, help="Groups for --norm group."),
    recipe: str = typer.Option("default", help="default, or 'assignment': the original assignment exactly (wd 0, no flip, pad 2, rotate 5, cutout 16 p0.5)."),
    crop: bool | None = typer.Option(None, "--crop/--no-crop", help="Random pad + crop."),
    pad: int | None = typer.Option(None, help="Padding for the random crop (default 4)."),
    flip: bool | None = typer.Option(None, "--flip/--no-flip", help="Random horizontal flip."),
    flip_p: float | None = typer.Option(None, help="Flip probability (default 0.5)."),
    rotate: bool | None = typer.Option(None, "--rotate/--no-rotate", help="Random rotation."),
    max_angle: float | None = typer.Option(None, help="Largest rotation in degrees (default 5)."),
    cutout: bool | None = typer.Option(None, "--cutout/--no-cutout", help="Cutout."),
    cutout_size: int | None = typer.Option(None, help="Cutout square side (default 16)."),
    cutout_p: float | None = typer.Option(None, help="Cutout probability (default 0.5)."),
    fill: str | None = typer.Option(None, help="Fill for pad/rotation/cutout: 'mean' (default) or R,G,B."),
    subset: int | None = typer.Option(None, help="Train on the first N training images only."),
    test_subset: int | None = typer.Option(None, help="Evaluate on the first N test images only (quick CPU runs)."),
    max_steps: int | None = typer.Option(None, help="At most this many steps per epoch (quick looks)."),
    workers: int | None = typer.Option(None, help="Loader threads (default: all cores)."),
    seed: int = typer.Option(0, help="Seed for init, shuffling and augmentation."),
    device: str = typer.Option("auto", help="auto (CUDA when present), cpu, cuda, cuda:N."),
    amp: bool = typer.Option(True, "--amp/--no-amp", help="Mixed precision on CUDA (bf16, else fp16 + GradScaler)."),
    channels_last: bool | None = typer.Option(None, "--channels-last/--no-channels-last", help="Memory format (default on: faster on CUDA and, measured, on CPU)."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the model."),
    quiet: bool = typer.Option(False, help="No progress bar."),
) -> None:
    """Template: the flags `train` and `compare` share (see `with_train_flags`)."""


def with_train_flags(*exclude: str) -> Callable[[Callable], Callable]:
    """Append the shared train flags (less `exclude`) to fn's signature; typer reads __signature__,
    fn receives them as **flags. One list of flags, so train and compare cannot drift apart."""

    def decorate(fn: Callable) -> Callable:
        own = [p for p in inspect.signature(fn, eval_str=True).parameters.values() if p.kind is not p.VAR_KEYWORD]
        shared = [p for p in inspect.signature(_train_flags, eval_str=True).parameters.values()
                  if p.name not in exclude]
        fn.__signature__ = inspect.Signature(own + shared, return_annotation=None)
        fn.__annotations__ = {p.name: p.annotation for p in own + shared}
        return fn

    return decorate


def _train_config(flags: dict) -> TrainConfig:
    """Flags → a TrainConfig (recipe first, then every explicit flag)."""
    from common.config import TrainConfig, apply_recipe

    f = flags
    cfg = apply_recipe(TrainConfig(), f["recipe"])
    cfg.data.data_dir, cfg.data.subset, cfg.data.workers = str(f["data"]), f["subset"], f["workers"]
    cfg.data.test_subset = f["test_subset"]
    o = cfg.optim
    o.epochs = f["epochs"] if f["epochs"] is not None else o.epochs
    o.batch_size, o.lr, o.momentum, o.label_smoothing = f["batch_size"], f["lr"], f["momentum"], f["label_smoothing"]
    o.weight_decay = f["weight_decay"] if f["weight_decay"] is not None else o.weight_decay
    o.plateau_factor, o.plateau_patience, o.plateau_threshold = f["plateau_factor"], f["plateau_patience"], f["plateau_threshold"]
    o.max_steps = f["max_steps"]
    cfg.model.norm, cfg.model.groups = f.get("norm", "layer"), f["groups"]
    a = cfg.augment
    for name in ("crop", "pad", "flip", "flip_p", "rotate", "max_angle", "cutout", "cutout_size", "cutout_p"):
        if f[name] is not None:
            setattr(a, name, f[name])
    a.fill = _parse_fill(f["fill"])
    cfg.run.seed, cfg.run.device, cfg.run.amp = f["seed"], f["device"], f["amp"]
    cfg.run.channels_last, cfg.run.compile = f["channels_last"], f["compile"]
    return cfg


@app.command()
@user_errors
@with_train_flags()
def train(
    run: Path | None = typer.Option(None, "--run", "--run-dir", help="Run directory to create (default runs/<timestamp>-<norm>); spell it --run-dir under torchrun, whose own --run-path makes --run ambiguous."),
    resume: Path | None = typer.Option(None, help="Continue the run in this directory from its last.pt."),
    **flags,
) -> None:
    """Train ResNet-18 (LayerNorm by default) and write a run directory."""
    from training.fit import train as run_train

    cfg = _train_config(flags)
    cfg.run.run_dir = str(run) if run is not None else ""
    epochs = flags["epochs"]
    result = run_train(cfg, resume=resume, extra_epochs_to=epochs if resume is not None else None,
                       log=typer.echo, progress=not flags["quiet"])
    if not result.main:
        return
    minutes, secs = divmod(result.seconds, 60)
    typer.echo(f"done: best test accuracy {100 * result.best_acc:.2f}% at epoch {result.best_epoch}; "
               f"{result.epochs_done} epochs in {int(minutes)}m{secs:04.1f}s; run in {result.run.path}")


@app.command()
@user_errors
@with_train_flags("norm")
def compare(
    norms: str | None = typer.Option(None, help="Comma-separated normalisations to train, e.g. batch,group,layer (default: those of --runs, else all three)."),
    runs: list[str] = typer.Option([], help="Finished runs to reuse instead of training their norms: repeat the flag or give a comma-separated list."),
    run: Path | None = typer.Option(None, help="Comparison folder (default runs/compare-<timestamp>); each norm's run is a subfolder. Re-run the same command to resume it."),
    **flags,
) -> None:
    """Normalisation study: one run per norm with identical settings and seed, one overlay figure and table."""
    from training.compare import compare as run_compare
    from training.compare import parse_norms

    cfg = _train_config(flags)
    chosen = parse_norms(norms) if norms is not None else (None if runs else ["batch", "group", "layer"])
    reuse = [Path(p) for value in runs for p in value.split(",") if p]
    result = run_compare(chosen, cfg, run, runs=reuse, log=typer.echo, progress=not flags["quiet"])
    c = result.comparison
    typer.echo(c.table_md)
    for path in (c.figure, c.md_path, c.json_path):
        typer.echo(f"wrote {path}")


@app.command()
@user_errors
def summary(
    norm: str = typer.Option("layer", help="layer, group or batch."),
    groups: int = typer.Option(32, help="Groups for --norm group."),
) -> None:
    """Print the model's per-layer table (output shape, parameters) and totals."""
    from common.config import ModelConfig
    from models import build_model
    from models.summary import summary_table

    typer.echo(summary_table(build_model(ModelConfig(norm=norm, groups=groups))))


@app.command()
@user_errors
def explain(
    run: Path | None = typer.Option(None, help="Run directory (default: the newest run under runs/)."),
    layer: list[int] = typer.Option([3], help="ResNet stage whose last block is explained: 3 (8×8 map) or 4 (4×4 map); repeat the flag for both."),
    count: int = typer.Option(20, help="How many misclassified test images to show."),
    pick: str = typer.Option("confident", help="confident: the mistakes the model was surest about; random: a seeded sample."),
    seed: int = typer.Option(0, help="Seed for --pick random and for the faithfulness metric's imputation noise."),
    target: str = typer.Option("predicted", help="Class the heat map explains: predicted or true."),
    method: str = typer.Option("gradcam", help="gradcam, gradcam++, xgradcam, hirescam, layercam, eigencam, eigengradcam, scorecam (minutes on a CPU)."),
    which: str = typer.Option("best", help="Checkpoint: best or last."),
    data: Path | None = typer.Option(None, help="Folder with test.npz (default: the one the run was trained on)."),
) -> None:
    """Misclassified test images, Grad-CAM heat maps and their faithfulness scores."""
    from analysis.commands import explain_command

    explain_command(run=run, layer=layer, count=count, pick=pick, seed=seed, target=target,
                    method=method, which=which, data=data)


@app.command()
@user_errors
def evaluate(
    run: Path | None = typer.Option(None, help="Run directory (default: the newest run under runs/)."),
    which: str = typer.Option("best", help="Checkpoint: best or last."),
    recompute: bool = typer.Option(False, "--recompute", help="Run the model over the test set instead of reading saved predictions."),
    data: Path | None = typer.Option(None, help="Folder with test.npz (default: the one the run was trained on)."),
) -> None:
    """Overall and per-class test accuracy and a confusion matrix."""
    from analysis.commands import evaluate_command

    evaluate_command(run=run, which=which, recompute=recompute, data=data)


@app.command()
@user_errors
def report(
    run: Path | None = typer.Argument(None, help="Run directory or compare folder (default: the newest run under runs/)."),
    out: Path | None = typer.Option(None, help="HTML file to write (default: RUN/report.html)."),
) -> None:
    """One self-contained HTML page: config, data, curves, per-class accuracy, Grad-CAM, throughput."""
    from analysis.commands import report_command

    report_command(run=run, out=out)


@bench_app.command("loader")
@user_errors
def bench_loader_cmd(
    data: Path = typer.Option(Path("data"), help="Prepared data; a synthetic set is used when absent."),
    batch_size: int = typer.Option(512, help="Images per batch."),
    epochs: int = typer.Option(2, help="Timed epochs of the FFCV pipelines."),
    tv_limit: int = typer.Option(20_000, help="Images timed through torchvision (it is ~25x slower)."),
    workers: int | None = typer.Option(None, help="Workers for both loaders (default: all cores)."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the figures here."),
) -> None:
    """Train pipeline (all augmentations) vs torchvision DataLoader vs no augmentation."""
    from bench.common import report
    from bench.loader import bench_loader

    report(bench_loader(data, batch_size, epochs, tv_limit, workers, log=typer.echo), json_out, typer.echo)


@bench_app.command("train")
@user_errors
def bench_train_cmd(
    data: Path = typer.Option(Path("data"), help="Prepared data; a synthetic set is used when absent."),
    batch_size: int = typer.Option(128, help="Images per step."),
    steps: int | None = typer.Option(None, help="Timed steps (default 6 on CPU, 50 on CUDA)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    norm: str = typer.Option("layer", help="layer, group or batch."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the figures here."),
) -> None:
    """Train step fed by the loader vs model-only vs a torchvision baseline."""
    from bench.common import report
    from bench.train import bench_train

    report(bench_train(data, batch_size, steps, device=device, norm=norm, log=typer.echo), json_out, typer.echo)


@bench_app.command("prepare")
@user_errors
def bench_prepare_cmd(
    source: Path = typer.Option(..., help="A CIFAR-10 archive or folder to time (it is not modified)."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the figures here."),
) -> None:
    """Archive → betons, step by step, against the floor of just reading the archive."""
    from bench.common import report
    from bench.prepare import bench_prepare

    report(bench_prepare(source, log=typer.echo), json_out, typer.echo)


@bench_app.command("startup")
@user_errors
def bench_startup_cmd(
    data: Path = typer.Option(Path("data"), help="Prepared data; a synthetic set is used when absent."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the figures here."),
) -> None:
    """Process start → first batch: imports, loader build, JIT with a cold and a warm numba cache."""
    from bench.common import report
    from bench.startup import bench_startup

    report(bench_startup(data, log=typer.echo), json_out, typer.echo)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
