"""loss_curve.png: one panel per model (matplotlib, no torch): the training loss of every
optimizer step (raw, and smoothed), the held-out validation loss after each epoch, and the
base model's held-out loss as a reference line: a run that learned ends below it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from oneseekd.certify.certified import TrainedModel

SMOOTHING = 0.9  # the weight of the running average (an exponential moving average)


def smoothed(values: Sequence[float], weight: float = SMOOTHING) -> list[float]:
    """An exponential moving average, debiased (as TensorBoard's) so it starts at the data."""
    out: list[float] = []
    average, norm = 0.0, 0.0
    for value in values:
        average = weight * average + (1 - weight) * value
        norm = weight * norm + (1 - weight)
        out.append(average / norm)
    return out


def epoch_steps(steps: int, epochs: int) -> list[int]:
    """The optimizer step each epoch ended on (every epoch has as many steps)."""
    return [round(steps * (e + 1) / epochs) for e in range(epochs)] if epochs else []


def _panel(ax: Any, m: TrainedModel) -> None:
    steps = list(m.evaluation.get("step_losses") or [])
    xs = list(range(1, len(steps) + 1))
    if steps:
        ax.plot(xs, steps, color="tab:blue", alpha=0.3, linewidth=0.8, label="train (per step)")
        ax.plot(xs, smoothed(steps), color="tab:blue", label="train (smoothed)")
        val_x = epoch_steps(len(steps), len(m.val_losses))
    else:  # a model trained before per-step losses were kept: per epoch only
        val_x = list(range(1, len(m.val_losses) + 1))
        ax.plot(val_x, m.train_losses, marker="o", color="tab:blue", label="train (per epoch)")
    ax.plot(val_x, m.val_losses, marker="s", color="tab:orange", label="validation")
    base = m.evaluation.get("base")
    if isinstance(base, dict) and isinstance(base.get("loss"), int | float):
        ax.axhline(
            float(base["loss"]), color="tab:gray", linestyle="--", label="base model (held-out)"
        )
    ax.set_title(m.key, fontsize=9)
    ax.set_xlabel("optimizer step" if steps else "epoch")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def loss_curve(path: Path, models: Sequence[TrainedModel]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(len(models), 1, figsize=(7, 3.2 * len(models)), dpi=100, squeeze=False)
    for ax, m in zip(axes[:, 0], models, strict=True):
        _panel(ax, m)
    fig.suptitle("OneSeek LoRA training")
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})
    plt.close(fig)
