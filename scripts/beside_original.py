"""Plot runs' test accuracy against epochs and against wall-clock minutes, beside the original's log.

Usage: python scripts/beside_original.py OUT.png RUN_DIR [RUN_DIR ...] [--lengths RUN_DIR ...]
e.g.   python scripts/beside_original.py docs/images/time_to_accuracy.png runs/fast-s0 runs/assign10 \
           --lengths runs/fast-e15 runs/fast-e20 runs/fast-e30

Each RUN_DIR before `--lengths` is drawn as a curve over its epochs, in both panels, with a star
where it scored its test-time augmentation (`test_acc_tta`: what `--recipe fast` reports). The runs after
it are one recipe trained for different numbers of epochs (a one-cycle schedule ends at lr 0, so
each length is its own run, and its epoch-10 accuracy says little about a 10-epoch run): each gives
one point, its final test accuracy at its last epoch, and the points are joined in the epochs panel
only (such runs may have shared their machine, so their minutes are left out).

The original assignment's figures are the ones its notebook logged (issue 13; official CIFAR-10,
fp32, ResNet-18 with LayerNorm main path and BatchNorm projection shortcuts): only these epochs
were quoted, so they are drawn as points, and its 40-epoch result as a horizontal line. Its wall
time was not logged, so the minutes panel holds this project's runs only. Minutes are the run's
own `wall_seconds` column (time spent training and evaluating, summed over resumes; older runs
without it: the per-epoch `seconds`), so they depend on the machine and on what else ran on it.
"""

from __future__ import annotations

import math
import sys
from itertools import accumulate
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file from the repo root

from matplotlib.transforms import offset_copy  # noqa: E402

from common.errors import UserError  # noqa: E402  (after the path line above)
from common.figures import new_figure, save_figure  # noqa: E402
from common.rundir import RunDir  # noqa: E402

ORIGINAL_TEST = {1: 40.1, 2: 52.2, 3: 60.9, 4: 51.7, 5: 68.8, 8: 71.0, 9: 77.4, 10: 74.5}
ORIGINAL_TRAIN = {1: 30.4, 2: 48.0, 3: 56.3}
ORIGINAL_40_EPOCHS = 88.56
RUN_COLORS = [f"C{k}" for k in range(10) if k != 3]  # C3 (red) is the original's


def read_curve(run: Path) -> tuple[list[int], list[float], list[float], list[float]]:
    """Epochs, test and train accuracy (%), and cumulative wall minutes at each epoch's end. Test
    accuracy is NaN at epochs a run did not score (`--test-every needed`, the CUDA default)."""
    rows = RunDir(run).read_metrics()
    epochs = [int(r["epoch"]) for r in rows]
    test = [100 * r["test_acc"] for r in rows]
    train = [100 * r["train_acc"] for r in rows]
    if rows and math.isfinite(rows[0].get("wall_seconds", math.nan)):
        seconds = [r["wall_seconds"] for r in rows]
    else:
        seconds = list(accumulate(r["seconds"] for r in rows))
    minutes = [s / 60 for s in seconds]
    return epochs, test, train, minutes


def tta_points(run: Path) -> tuple[list[int], list[float], list[float]]:
    """Epochs, TTA test accuracy (%) and wall minutes where the run scored its test-time
    augmentation (`--tta`: the number `--recipe fast` reports, at its last epoch); empty lists for
    runs without it (older metrics.csv have no `test_acc_tta` column)."""
    epochs, _, _, minutes = read_curve(run)
    tta = [100 * r.get("test_acc_tta", math.nan) for r in RunDir(run).read_metrics()]
    kept = [j for j, acc in enumerate(tta) if math.isfinite(acc)]
    return [epochs[j] for j in kept], [tta[j] for j in kept], [minutes[j] for j in kept]


def label_of(run: Path) -> str:
    """The run's folder name and, where its config names them, its recipe, whether its convs were
    weight-standardized (`--recipe fast` had plain ones before) and its early epochs downscaled
    (progressive resizing), and its device (the minutes panel mixes machines)."""
    rundir = RunDir(run)
    try:
        cfg = rundir.train_config()
        recipe: str | None = cfg.recipe
        convs = "weight-std" if cfg.model.weight_std else ""
        convs += f", from {cfg.augment.min_res} px" if cfg.augment.min_res else ""
        device = str(rundir.read_config().get("device", "")).split(",")[0]
    except UserError:  # no config.json, or a damaged one: the folder name alone
        recipe, convs, device = None, "", ""
    details = ", ".join(x for x in (f"--recipe {recipe}" if recipe else "", convs, device) if x)
    return f"{run.name} ({details})" if details else run.name


def final_point(run: Path) -> tuple[int, float]:
    """A run's last epoch and its test accuracy (%) there, for the schedule-length series."""
    epochs, test, _, _ = read_curve(run)
    if not epochs or not math.isfinite(test[-1]):
        raise UserError(f"{run} has no test accuracy at its last epoch: it cannot be a point of --lengths")
    return epochs[-1], test[-1]


def main(out: Path, runs: list[Path], lengths: list[Path] | None = None) -> None:
    fig = new_figure(11.0, 6.0, layout="tight")
    by_epoch, by_minute = fig.subplots(1, 2, sharey=True)
    last_epoch = max(ORIGINAL_TEST)
    for i, run in enumerate(runs):
        epochs, test, train, minutes = read_curve(run)
        color, label = RUN_COLORS[i % len(RUN_COLORS)], label_of(run)
        scored = [j for j, acc in enumerate(test) if math.isfinite(acc)]  # --test-every needed skips epochs
        by_epoch.plot([epochs[j] for j in scored], [test[j] for j in scored], "o-", color=color, label=f"{label}: test")
        by_epoch.plot(epochs, train, "o--", color=color, alpha=0.5, label=f"{label}: train (augmented)")
        by_minute.plot([minutes[j] for j in scored], [test[j] for j in scored], "o-", color=color, label=f"{label}: test")
        tta_epochs, tta, tta_minutes = tta_points(run)
        if tta:
            by_epoch.plot(tta_epochs, tta, "*", ms=11, color=color, label=f"{label}: test with its TTA")
            by_minute.plot(tta_minutes, tta, "*", ms=11, color=color, label=f"{label}: test with its TTA")
        last_epoch = max([last_epoch, *epochs])
    if lengths:
        points = sorted(final_point(run) for run in lengths)
        by_epoch.plot([e for e, _ in points], [a for _, a in points], "D-", color="k",
                      label=f"{label_of(lengths[0])} for {', '.join(str(e) for e, _ in points)} epochs: "
                            "final test, one run each")
        last_epoch = max(last_epoch, points[-1][0])
    by_epoch.plot(list(ORIGINAL_TEST), list(ORIGINAL_TEST.values()), "s", color="C3", label="original log: test")
    by_epoch.plot(list(ORIGINAL_TRAIN), list(ORIGINAL_TRAIN.values()), "s", color="C3", mfc="none",
                  label="original log: train")
    for ax in (by_epoch, by_minute):
        ax.axhline(ORIGINAL_40_EPOCHS, color="C3", ls=":", lw=1, label="original after 40 epochs: 88.56%")
        ax.grid(alpha=0.3)
        # 36 points below the axes (the tick labels and the axis label sit in between), however tall the
        # legend makes tight layout shrink the axes: the curves and the labels stay clear
        below = offset_copy(ax.transAxes, fig=fig, y=-36, units="points")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, 0.0), bbox_transform=below, fontsize=7)
    by_epoch.set_xlabel("epoch")
    by_epoch.set_xticks(range(1, last_epoch + 1) if last_epoch <= 20 else [1, *range(5, last_epoch + 1, 5)])
    by_epoch.set_ylabel("accuracy (%)")
    minutes_drawn = [x for line in by_minute.get_lines() for x in line.get_xdata() if x > 0]
    if minutes_drawn and max(minutes_drawn) > 20 * min(minutes_drawn):  # a GPU's minute beside a CPU's hour
        by_minute.set_xscale("log")
    by_minute.set_xlabel("wall-clock minutes (as each run logged them, on its own machine)")
    fig.suptitle("test accuracy on the shared data against epochs and minutes, beside the original's log", fontsize=9)
    print(f"wrote {save_figure(fig, out)}")


if __name__ == "__main__":
    args = sys.argv[2:]
    cut = args.index("--lengths") if "--lengths" in args else len(args)
    curves, lengths = args[:cut], args[cut + 1:]
    if len(sys.argv) < 3 or not curves or not all((Path(p) / "metrics.csv").is_file() for p in curves + lengths):
        sys.exit("usage: python scripts/beside_original.py OUT.png RUN_DIR [RUN_DIR ...] [--lengths RUN_DIR ...] "
                 "(each RUN_DIR with a metrics.csv)")
    try:
        main(Path(sys.argv[1]), [Path(p) for p in curves], [Path(p) for p in lengths])
    except UserError as exc:
        sys.exit(f"error: {exc}")
