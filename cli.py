#!/usr/bin/env python
"""Command line for the CIFAR-10 toolkit: prepare → train → explain / evaluate, plus benchmarks.

The CLI only parses flags into configs and calls one library function per command. Heavy imports
(torch, FFCV, matplotlib) happen inside the commands, so `--help` stays instant and commands that
never read betons never import FFCV.
"""

from __future__ import annotations

import functools
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common.allocator import reexec_with_tcmalloc  # noqa: E402  (standard library only)

if __name__ == "__main__":
    reexec_with_tcmalloc()  # before typer is imported, so the re-executed process alone imports the CLI

import typer  # noqa: E402
from typer._click.exceptions import NoArgsIsHelpError, UsageError  # noqa: E402
from typer.core import TyperGroup  # noqa: E402

from cli_flags import with_train_flags  # noqa: E402  (typer + config only: --help stays instant)
from common.errors import UserError  # noqa: E402  (no heavy imports behind this)


def _fail(message: str, code: int = 2) -> NoReturn:
    message = " ".join(message.split())  # one line, even when it quotes a multi-line library message
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _usage_error(exc: UsageError) -> NoReturn:
    """typer's own refusals (a flag that does not parse, an unknown option or command, a missing
    argument) as the same one `error:` line, pointing at the command's --help, instead of a usage
    block and a boxed panel."""
    where = f" (see {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
    _fail(f"{exc.format_message()}{where}", exc.exit_code)


class _OneLineUsageErrors(TyperGroup):
    """The top-level group: parse errors anywhere below it (subcommands included) become one line.
    A bare `cli.py` or `cli.py bench` still prints the help (NoArgsIsHelpError)."""

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().make_context(*args, **kwargs)
        except NoArgsIsHelpError:
            raise
        except UsageError as exc:
            _usage_error(exc)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except NoArgsIsHelpError:
            raise
        except UsageError as exc:
            _usage_error(exc)


app = typer.Typer(cls=_OneLineUsageErrors, add_completion=False, no_args_is_help=True,
                  pretty_exceptions_enable=False,
                  help="Train and explain a ResNet-18 on CIFAR-10 (data through FFCV or a torch-only loader).")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks; each compares against a baseline in the same run.")
app.add_typer(bench_app, name="bench")


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
            raise typer.Exit(130) from None

    return wrapper


RUN_HELP = "Run directory (default: the newest run under runs/)."


def _run_argument(help_text: str = RUN_HELP) -> Any:
    return typer.Argument(None, metavar="RUN", show_default=False, help=f"{help_text} Or give it as --run RUN.")


def _run_option(help_text: str = RUN_HELP) -> Any:
    return typer.Option(None, "--run", show_default=False, help=f"{help_text} The same as the RUN argument.")


def _one_run(positional: Path | None, option: Path | None) -> Path | None:
    """explain, evaluate, export and report take the run either way: `explain RUN` or
    `explain --run RUN` (predict, whose arguments are images, only as --run)."""
    if positional is not None and option is not None and positional != option:
        raise UserError(f"the run is given twice ({positional} and --run {option}); give it once, "
                        "as RUN or as --run RUN")
    return positional if positional is not None else option


@app.command()
@user_errors
def prepare(
    source: Path | None = typer.Option(None, help="Local cifar-10-python.tar.gz, extracted cifar-10-batches-py/ folder, or image folder (train/<class>/*.png|jpg|jpeg|bmp|webp and test/<class>/…; centre-cropped, resized to 32x32); default: download the official archive."),
    out: Path = typer.Option(Path("data"), help="Folder for train.npz, test.npz, manifest.json and (where FFCV imports) train.beton, test.beton."),
    limit: int | None = typer.Option(None, help="Write only the first N images of each split (quick experiments)."),
    force: bool = typer.Option(False, help="Rewrite even when valid outputs already exist."),
) -> None:
    """CIFAR-10 (or an image folder) → arrays for the torch loader, FFCV .beton files where FFCV imports, and a manifest (validated, atomic)."""
    from pipeline.manifest import has_betons
    from pipeline.prepare import prepare as run_prepare

    result = run_prepare(str(source) if source is not None else None, out, limit=limit, force=force,
                         log=lambda m: typer.echo(m, err=True))
    m = result.manifest
    counts = ", ".join(f"{s} {m['splits'][s]['count']:,}" for s in ("train", "test"))
    files = "betons and arrays" if has_betons(m) else "arrays (no betons: FFCV does not import)"
    if result.skipped:
        typer.echo(f"{out}/ already holds valid {files} ({counts}); nothing to do (use --force to rewrite)")
    else:
        kind = "official" if m["official"] else "non-official"
        typer.echo(f"wrote {out}/ {files} ({counts}; {kind} data) + {out}/manifest.json in {result.seconds:.1f} s")


@app.command()
@user_errors
@with_train_flags()
def train(
    run: Path | None = typer.Option(None, "--run", "--run-dir", help="Run directory to create (default runs/<timestamp>-<norm>); spell it --run-dir under torchrun, whose own --run-path makes --run ambiguous."),
    resume: Path | None = typer.Option(None, help="Continue the run in this directory from its last.pt (with --epochs: a larger budget; how it runs may change: --device, --amp, --compile, --channels-last, --workers, --loader, --data, --tensorboard; nothing else)."),
    **flags: Any,
) -> None:
    """Train ResNet-18 (by default LayerNorm in the blocks, BatchNorm in the projection shortcuts) and write a run directory."""
    from cli_flags import environment_flags, given_environment, given_recipe_flags, train_config
    from common.format import duration
    from training.fit import train as run_train

    if resume is not None and run is not None:
        raise UserError("give either --run (a new run) or --resume (an existing one), not both")
    if resume is not None and given_recipe_flags(flags):
        raise UserError(f"{', '.join(given_recipe_flags(flags))} cannot change when resuming (the run keeps its own "
                        f"settings); only --epochs and {', '.join(environment_flags())} may be given with --resume")
    cfg = train_config(flags)
    cfg.run.run_dir = str(run) if run is not None else ""
    result = run_train(cfg, resume=resume, extra_epochs_to=flags["epochs"] if resume is not None else None,
                       log=typer.echo, progress=not flags["quiet"],
                       overrides=given_environment(flags) if resume is not None else None)
    if not result.main:
        return
    chosen = ("best.pt is the last epoch (a fixed schedule without validation: nothing decides)"
              if result.decided_on == "last epoch" else
              f"best epoch {result.best_epoch} chosen on {result.decided_on} ({result.decided_on} accuracy "
              f"{100 * result.best_acc:.2f}%); test accuracy at that epoch {100 * result.best_test_acc:.2f}%")
    epochs = f"{result.epochs_done} epoch{'' if result.epochs_done == 1 else 's'}"
    tta = (f" ({100 * result.final_test_acc_tta:.2f}% with {result.tta_name})"
           if result.final_test_acc_tta == result.final_test_acc_tta else "")
    typer.echo(f"done: {chosen}; final test accuracy {100 * result.final_test_acc:.2f}%{tta}; {epochs} "
               f"in {duration(result.seconds, compact=True)}; run in {result.run.path}")
    run_arg = shlex.quote(str(result.run.path))
    typer.echo(f"next: python cli.py evaluate {run_arg}  ·  python cli.py explain {run_arg} --layer 3 --layer 4  ·  "
               f"python cli.py report {run_arg}")


@app.command()
@user_errors
@with_train_flags("norm")
def compare(
    norms: str | None = typer.Option(None, help="Comma-separated normalisations to train, e.g. batch,group,layer (default: those of --runs, else all three)."),
    runs: list[str] = typer.Option([], help="Finished runs to reuse instead of training their norms: repeat the flag or give a comma-separated list."),
    run: Path | None = typer.Option(None, "--run", "--run-dir", help="Comparison folder (default runs/compare-<timestamp>); each norm's run is a subfolder. Re-run the same command to resume it. Spell it --run-dir under torchrun."),
    seeds: str | None = typer.Option(None, help="Train each norm with each of these seeds, e.g. 0,1,2 (default: --seed alone); the table then reports mean ± sd and paired differences with 95% intervals."),
    **flags: Any,
) -> None:
    """Normalisation study: one run per norm with identical settings and seed, one overlay figure and table."""
    from cli_flags import train_config
    from training.compare import compare as run_compare
    from training.compare import parse_norms, parse_seeds

    cfg = train_config(flags)
    chosen = parse_norms(norms) if norms is not None else (None if runs else ["batch", "group", "layer"])
    reuse = [Path(p) for value in runs for p in value.split(",") if p]
    result = run_compare(chosen, cfg, run, runs=reuse, log=typer.echo, progress=not flags["quiet"],
                         seeds=parse_seeds(seeds) if seeds is not None else None)
    if not result.main:  # torchrun ranks other than 0 train but do not write or print
        return
    from analysis.compare.tables import write_comparison

    c = write_comparison(result.folder)
    typer.echo(c.table_md)
    for path in (c.figure, c.md_path, c.json_path):
        typer.echo(f"wrote {path}")


@app.command()
@user_errors
def summary(
    norm: str = typer.Option("layer", help="layer, group or batch."),
    groups: int = typer.Option(32, help="Groups for --norm group."),
    shortcut_norm: str | None = typer.Option(None, help="Norm of the 3 projection shortcuts: same, layer, group, batch (default: the train default, batch)."),
    zero_init: bool = typer.Option(True, "--zero-init/--no-zero-init", help="Zero-init the last norm of each block."),
    width: int = typer.Option(64, help="Channels of the first stage (64: ResNet-18 as published)."),
    weight_std: bool = typer.Option(False, "--weight-std/--no-weight-std", help="Weight-standardized convs."),
    recipe: str | None = typer.Option(None, help="Describe a recipe's model instead (e.g. assignment, fast)."),
) -> None:
    """Print the model's per-layer table (output shape, parameters) and totals."""
    from common.config import ModelConfig, TrainConfig, apply_recipe
    from models import build_model
    from models.summary import describe_norms, summary_table

    if recipe is not None:
        model_cfg = apply_recipe(TrainConfig(), recipe).model
    else:
        model_cfg = ModelConfig(norm=norm, groups=groups, zero_init=zero_init, width=width, weight_std=weight_std)
        model_cfg.shortcut_norm = shortcut_norm or model_cfg.shortcut_norm
    model_cfg.validate()  # an unknown --norm or --shortcut-norm is one line, before anything is printed
    typer.echo(describe_norms(model_cfg))
    typer.echo(summary_table(build_model(model_cfg)))


@app.command()
@user_errors
def explain(
    run: Path | None = _run_argument(),
    run_option: Path | None = _run_option(),
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
    from cli_analysis import explain_command

    explain_command(run=_one_run(run, run_option), layer=layer, count=count, pick=pick, seed=seed, target=target,
                    method=method, which=which, data=data)


@app.command()
@user_errors
def evaluate(
    run: Path | None = _run_argument(),
    run_option: Path | None = _run_option(),
    which: str = typer.Option("best", help="Checkpoint: best or last."),
    recompute: bool = typer.Option(False, "--recompute", help="Run the model over the test set instead of reading saved predictions."),
    data: Path | None = typer.Option(None, help="Folder with test.npz (default: the one the run was trained on)."),
    tta: bool = typer.Option(False, "--tta", help="Test-time augmentation, as the run's test pass scored it: each image and its mirror, and with the run's --tta-shift the shifted views too, logits averaged; the plain accuracy is printed beside it."),
    tta_shift: int | None = typer.Option(None, "--tta-shift", help="Score these shifted views instead of the run's own (0 = flip only, 1 = airbench's six views); implies --tta."),
    raw_weights: bool = typer.Option(False, "--raw-weights", help="For a run trained with --ema: score the raw weights the optimizer trained instead of their average (recomputed, never saved over the run's predictions)."),
) -> None:
    """Overall and per-class test accuracy and a confusion matrix."""
    from cli_analysis import evaluate_command

    evaluate_command(run=_one_run(run, run_option), which=which, recompute=recompute, data=data,
                     tta=tta or tta_shift is not None, tta_shift=tta_shift, raw_weights=raw_weights)


@app.command()
@user_errors
def report(
    run: Path | None = _run_argument("Run directory or compare folder (default: the newest run under runs/)."),
    run_option: Path | None = _run_option("Run directory or compare folder (default: the newest run under runs/)."),
    out: Path | None = typer.Option(None, help="HTML file to write (default: RUN/report.html)."),
) -> None:
    """One self-contained HTML page: config, data, curves, per-class accuracy, Grad-CAM, throughput."""
    from cli_analysis import report_command

    report_command(run=_one_run(run, run_option), out=out)


@app.command()
@user_errors
def predict(
    paths: list[str] = typer.Argument(..., metavar="PATH", help="Image files, folders (searched recursively for images; symlinked folders are not followed) or quoted globs ('photos/**/*.jpg'). PNG, JPEG, BMP and WebP are read; any other image (GIF, TIFF, …) is named and skipped, named or found in a folder."),
    run: Path | None = typer.Option(None, help="Run directory (default: the newest run under runs/); only as "
                                    "--run RUN here, since the arguments are the images."),
    which: str = typer.Option("best", help="Checkpoint: best or last."),
    top_k: int = typer.Option(3, help="Classes shown per image, most probable first."),
    cam: bool = typer.Option(False, "--cam", help="Also write a Grad-CAM figure per image for its predicted class: the original beside one overlay per --layer."),
    layer: list[int] = typer.Option([], help="With --cam: ResNet stage whose last block is explained, 3 (8×8 map, the default) or 4 (4×4); repeat for both."),
    out: Path | None = typer.Option(None, help="Folder for the --cam figures (default: RUN/predictions/), one <name>_gradcam.png per image."),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the top-k per file (and the skipped files) to this JSON file."),
) -> None:
    """Classify your own images with a trained run: a table of the top-k classes per file.

    PNG, JPEG, BMP or WebP of any size and mode. Each image is centre-cropped to a square (the
    shorter side) and resized to 32×32 with Pillow's antialiased BICUBIC (reducing_gap=3); 32×32
    images are used as they are. Transparency is composited onto white; greyscale, palette and CMYK
    become RGB; a JPEG's EXIF rotation is applied. Normalisation and class names come from the run's
    config.json. A file that cannot be read is named and skipped: exit status 1 if any was, 2 if
    none could be read.
    """
    from cli_model_use import predict_command

    predict_command(paths, run=run, top_k=top_k, cam=cam, layer=layer, out=out, json_path=json_path, which=which)


@app.command()
@user_errors
def export(
    run: Path | None = _run_argument(),
    format: str = typer.Option(..., "--format", help="torchscript or onnx (opset 18, dynamic batch)."),
    run_option: Path | None = _run_option(),
    which: str = typer.Option("best", help="Checkpoint: best or last."),
    out: Path | None = typer.Option(None, help="File to write (default: RUN/export/<which>.onnx or RUN/export/<which>.torchscript.pt)."),
    data: Path | None = typer.Option(None, help="Folder with test.npz for the parity check (default: the one the run was trained on)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out file that is not an export of this toolkit (one that is gets replaced anyway)."),
) -> None:
    """The model with its normalisation built in, as one file: input uint8 RGB NCHW (N, 3, 32, 32), 0-255; output logits.

    The file is checked before it is kept: on up to 256 test images its logits must match PyTorch's
    within 1e-4 and give the same top-1 class for every image, or nothing is written.
    """
    from cli_model_use import export_command

    export_command(run=_one_run(run, run_option), fmt=format, which=which, out=out, data=data, force=force)


def _bench_counts(**values: int | None) -> None:
    """Every count a benchmark takes is at least 1 (a 0 used to end in ZeroDivisionError after
    minutes of timing) and not absurd; checked before anything is built or timed."""
    from common.config import MAX_BATCH, MAX_COUNT, MAX_EPOCHS, MAX_WORKERS, check_at_most

    limits = {"batch_size": MAX_BATCH, "epochs": MAX_EPOCHS, "workers": MAX_WORKERS}
    for name, value in values.items():
        flag = name.replace("_", "-")
        if value is not None and value < 1:
            raise UserError(f"--{flag} must be at least 1, got {value}")
        check_at_most(flag, value, limits.get(name, MAX_COUNT))


def _bench_data(data: Path) -> None:
    if data.exists() and not data.is_dir():
        raise UserError(f"--data {data} is a file, not a folder; pass a folder written by `python cli.py prepare` "
                        "(or a folder without one, for synthetic images)")


@bench_app.command("loader")
@user_errors
def bench_loader_cmd(
    data: Path = typer.Option(Path("data"), help="Prepared data; a synthetic set is used when absent."),
    batch_size: int = typer.Option(512, help="Images per batch."),
    epochs: int = typer.Option(2, help="Timed epochs of the FFCV pipelines."),
    tv_limit: int = typer.Option(20_000, help="Images timed through torchvision (it is ~25x slower)."),
    workers: int | None = typer.Option(None, help="Workers for both loaders (default: a table for 1 and 2)."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the figures here."),
) -> None:
    """Train pipeline (all augmentations) vs torchvision DataLoader vs no augmentation."""
    _bench_counts(batch_size=batch_size, epochs=epochs, tv_limit=tv_limit, workers=workers)
    _bench_data(data)
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
    precisions: bool = typer.Option(True, "--precisions/--no-precisions", help="Also time fp32 vs bf16 (native only), eager vs torch.compile."),
    sides: str = typer.Option("", help="Also time model-only steps on images of these sides against 32 px, e.g. 24,16 "
                              "(what progressive resizing, --min-res, saves)."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the figures here."),
) -> None:
    """Train step fed by the loader vs model-only vs a torchvision baseline; fp32/bf16 × eager/compile."""
    _bench_counts(batch_size=batch_size, steps=steps)
    _bench_data(data)
    from bench.common import report
    from bench.train import bench_train, parse_sides

    report(bench_train(data, batch_size, steps, device=device, norm=norm, precisions=precisions,
                       sides=parse_sides(sides), log=typer.echo), json_out, typer.echo)


@bench_app.command("gpu")
@user_errors
def bench_gpu_cmd(
    data: Path = typer.Option(Path("data"), help="Prepared data; a synthetic set is used when absent."),
    steps: int | None = typer.Option(None, help="Timed steps per configuration (default 50 on CUDA, 3 on CPU)."),
    epochs: int = typer.Option(2, help="Epochs of the real `train` run."),
    compile: bool = typer.Option(True, "--compile/--no-compile", help="Also time torch.compile (most of its time on a GPU)."),
    norms: str = typer.Option("layer,group,batch", help="Norms of the model-only grid."),
    subset: int | None = typer.Option(None, help="Train images for the real run (quick CPU looks)."),
    test_subset: int | None = typer.Option(None, help="Test images for the real run."),
    max_steps: int | None = typer.Option(None, help="Steps per epoch of the real run."),
    device: str = typer.Option("auto", help="auto, cpu or cuda[:N]."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the figures here."),
) -> None:
    """One GPU's figures: norm × memory format × eager/compile, loader stall, a 2-epoch run, the race probe."""
    _bench_counts(steps=steps, epochs=epochs, subset=subset, test_subset=test_subset, max_steps=max_steps)
    _bench_data(data)
    from bench.common import report
    from bench.gpu import bench_gpu
    from training.compare import parse_norms

    report(bench_gpu(data, steps=steps, epochs=epochs, compile=compile, norms=tuple(parse_norms(norms)),
                     subset=subset, test_subset=test_subset, max_steps=max_steps, device=device, log=typer.echo),
           json_out, typer.echo)


@bench_app.command("prepare")
@user_errors
def bench_prepare_cmd(
    source: Path = typer.Option(..., help="A CIFAR-10 archive or folder to time (it is not modified)."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the figures here."),
) -> None:
    """Archive → betons, step by step, against the floor of just reading the archive."""
    if not source.exists():  # before bench_prepare imports FFCV (seconds)
        raise UserError(f"--source {source} does not exist; pass a CIFAR-10 .tar.gz archive or an extracted "
                        "cifar-10-batches-py/ folder")
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
    _bench_data(data)
    from bench.common import report
    from bench.startup import bench_startup

    report(bench_startup(data, log=typer.echo), json_out, typer.echo)


@bench_app.command("predict")
@user_errors
def bench_predict_cmd(
    run: Path | None = typer.Option(None, help="Run to predict with (default: an untrained ResNet-18; weights do not change speed)."),
    data: Path = typer.Option(Path("data"), help="Prepared data whose test images become the PNG files; random pixels when absent."),
    images: int = typer.Option(1000, help="PNG files in the folder."),
    baseline: int = typer.Option(100, help="Files timed one image at a time (the slow baseline)."),
    cli: bool = typer.Option(True, "--cli/--no-cli", help="Also time `python cli.py predict FOLDER` from the shell (start-up and imports included)."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the figures here."),
) -> None:
    """predict on a folder of PNG files: batched vs one image at a time, and the whole command's wall time."""
    _bench_counts(images=images, baseline=baseline)
    _bench_data(data)
    from bench.common import report
    from bench.predict import bench_predict

    report(bench_predict(run, data, images, baseline, cli, log=typer.echo), json_out, typer.echo)


def main() -> None:
    reexec_with_tcmalloc()  # once, before anything allocates (a no-op after the re-exec above): common/allocator.py
    app()


if __name__ == "__main__":
    main()
