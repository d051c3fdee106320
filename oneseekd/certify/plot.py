"""loss_curve.png: each model's training and validation loss per epoch (matplotlib, no torch)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from oneseekd.certify.certified import TrainedModel


def loss_curve(path: Path, models: Sequence[TrainedModel]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for m in models:
        epochs = list(range(1, len(m.train_losses) + 1))
        ax.plot(epochs, m.train_losses, marker="o", label=f"{m.key} train")
        ax.plot(epochs, m.val_losses, marker="s", linestyle="--", label=f"{m.key} validation")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title("OneSeek LoRA training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})
    plt.close(fig)
