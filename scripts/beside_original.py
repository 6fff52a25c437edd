"""Plot runs' test accuracy against epochs and against wall-clock minutes, beside the original's log.

Usage: python scripts/beside_original.py OUT.png RUN_DIR [RUN_DIR ...]
e.g.   python scripts/beside_original.py docs/images/time_to_accuracy.png runs/fast-s0 runs/assign10

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

from common.errors import UserError  # noqa: E402  (after the path line above)
from common.figures import new_figure, save_figure  # noqa: E402
from common.rundir import RunDir  # noqa: E402

ORIGINAL_TEST = {1: 40.1, 2: 52.2, 3: 60.9, 4: 51.7, 5: 68.8, 8: 71.0, 9: 77.4, 10: 74.5}
ORIGINAL_TRAIN = {1: 30.4, 2: 48.0, 3: 56.3}
ORIGINAL_40_EPOCHS = 88.56


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


def label_of(run: Path) -> str:
    """The run's folder name and, where its config names one, its recipe."""
    try:
        recipe = RunDir(run).train_config().recipe
    except UserError:  # no config.json, or a damaged one: the folder name alone
        recipe = None
    return f"{run.name} (--recipe {recipe})" if recipe else run.name


def main(out: Path, runs: list[Path]) -> None:
    fig = new_figure(10.0, 4.0, layout="tight")
    by_epoch, by_minute = fig.subplots(1, 2, sharey=True)
    last_epoch = max(ORIGINAL_TEST)
    for i, run in enumerate(runs):
        epochs, test, train, minutes = read_curve(run)
        color, label = f"C{i}", label_of(run)
        scored = [j for j, acc in enumerate(test) if math.isfinite(acc)]  # --test-every needed skips epochs
        by_epoch.plot([epochs[j] for j in scored], [test[j] for j in scored], "o-", color=color, label=f"{label}: test")
        by_epoch.plot(epochs, train, "o--", color=color, alpha=0.5, label=f"{label}: train (augmented)")
        by_minute.plot([minutes[j] for j in scored], [test[j] for j in scored], "o-", color=color, label=f"{label}: test")
        last_epoch = max([last_epoch, *epochs])
    by_epoch.plot(list(ORIGINAL_TEST), list(ORIGINAL_TEST.values()), "s", color="C3", label="original log: test")
    by_epoch.plot(list(ORIGINAL_TRAIN), list(ORIGINAL_TRAIN.values()), "s", color="C3", mfc="none",
                  label="original log: train")
    for ax in (by_epoch, by_minute):
        ax.axhline(ORIGINAL_40_EPOCHS, color="C3", ls=":", lw=1, label="original after 40 epochs: 88.56%")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=7)
    by_epoch.set_xlabel("epoch")
    by_epoch.set_xticks(range(1, last_epoch + 1) if last_epoch <= 20 else [1, *range(5, last_epoch + 1, 5)])
    by_epoch.set_ylabel("accuracy (%)")
    by_minute.set_xlabel("wall-clock minutes (as each run logged them, on its own machine)")
    fig.suptitle("test accuracy on the shared data against epochs and minutes, beside the original's log", fontsize=9)
    print(f"wrote {save_figure(fig, out)}")


if __name__ == "__main__":
    if len(sys.argv) < 3 or not all((Path(p) / "metrics.csv").is_file() for p in sys.argv[2:]):
        sys.exit("usage: python scripts/beside_original.py OUT.png RUN_DIR [RUN_DIR ...] (each RUN_DIR with a metrics.csv)")
    main(Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]])
