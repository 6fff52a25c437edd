"""Plot a `--recipe assignment` run's accuracy per epoch beside the original assignment's log.

Usage: python scripts/assignment_parity.py runs/assign10 docs/images/assignment_parity.png

The original's figures are the ones its notebook logged (issue 13; official CIFAR-10, fp32,
ResNet-18 with LayerNorm main path and BatchNorm projection shortcuts): only these epochs were
quoted, so they are drawn as points, not a line.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

ORIGINAL_TEST = {1: 40.1, 2: 52.2, 3: 60.9, 4: 51.7, 5: 68.8, 8: 71.0, 9: 77.4, 10: 74.5}
ORIGINAL_TRAIN = {1: 30.4, 2: 48.0, 3: 56.3}


def main(run: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    epochs = [int(r["epoch"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    ax.plot(epochs, [100 * float(r["test_acc"]) for r in rows], "o-", color="C0", label="this project: test")
    ax.plot(epochs, [100 * float(r["train_acc"]) for r in rows], "o--", color="C0", alpha=0.6,
            label="this project: train (augmented)")
    ax.plot(list(ORIGINAL_TEST), list(ORIGINAL_TEST.values()), "s", color="C3", label="original log: test")
    ax.plot(list(ORIGINAL_TRAIN), list(ORIGINAL_TRAIN.values()), "s", color="C3", mfc="none",
            label="original log: train")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.set_xticks(range(1, max(epochs + list(ORIGINAL_TEST)) + 1))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("--recipe assignment on the shared data vs the original's log", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp)
    tmp.replace(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python scripts/assignment_parity.py RUN_DIR OUT.png")
    main(Path(sys.argv[1]), Path(sys.argv[2]))
