"""Training curves: each loss term and the test accuracy per epoch, as one PNG (written atomically)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.ticker import MaxNLocator

from distill.plotting import save_png, subplots


def plot_training_curves(log: list[dict[str, Any]], path: str | Path, title: str = "") -> None:
    """Write a PNG of each loss term and the test accuracy per epoch.

    Args:
        log: The run's per-epoch records.
        path: The PNG to write.
        title: The figure's title.
    """
    epochs = [entry["epoch"] for entry in log]
    terms = list(log[0]["loss"]) if log else []
    fig, (ax_loss, ax_acc) = subplots(1, 2, figsize=(9, 3.5), dpi=110)
    for term in terms:
        ax_loss.plot(epochs, [entry["loss"][term] for entry in log], label=term)
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss (unweighted term)")
    ax_loss.legend(fontsize=8)
    if log and "test_accuracy" in log[0]:
        ax_acc.plot(epochs, [100 * entry["test_accuracy"] for entry in log])
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("test top-1 (%)")
    for ax in (ax_loss, ax_acc):  # epochs are whole numbers: no 0.5-epoch ticks on short runs
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title)
    save_png(fig, path)


class TensorBoardLog:
    """Per-epoch scalars to TensorBoard; the import fails early (at construction) if it is not installed."""

    def __init__(self, logdir: str | Path) -> None:
        from featstore.errors import InvalidInput

        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise InvalidInput("--tensorboard needs the tensorboard package (pip install tensorboard)") from None
        self.writer = SummaryWriter(str(logdir))

    def log_epoch(self, entry: dict[str, Any]) -> None:
        """Write one epoch's loss terms, accuracy, head cosine and learning rate."""
        for term, value in entry["loss"].items():
            self.writer.add_scalar(f"loss/{term}", value, entry["epoch"])
        for key in ("test_accuracy", "head_cosine", "lr"):
            if key in entry:
                self.writer.add_scalar(key, entry[key], entry["epoch"])
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the writer."""
        self.writer.close()
