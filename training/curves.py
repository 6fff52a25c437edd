"""curves.png: train vs test loss and accuracy per epoch, with learning-rate drops marked."""

from __future__ import annotations

from pathlib import Path

from common.atomic import atomic_path


def plot_curves(rows: list[dict[str, float]], path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=100)
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], "o--", color="tab:blue", label="train")
    ax_loss.plot(epochs, [r["test_loss"] for r in rows], "o-", color="tab:orange", label="test")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss")
    ax_acc.plot(epochs, [100 * r["train_acc"] for r in rows], "o--", color="tab:blue", label="train")
    ax_acc.plot(epochs, [100 * r["test_acc"] for r in rows], "o-", color="tab:orange", label="test")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    drops = [r["epoch"] for prev, r in zip(rows, rows[1:]) if r["lr"] < prev["lr"] * 0.999]
    for ax in (ax_loss, ax_acc):
        for i, e in enumerate(drops):
            # LR in row e is the LR used during epoch e, so the drop happened before it.
            ax.axvline(e - 0.5, color="grey", linestyle=":", label="LR drop" if i == 0 else None)
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
