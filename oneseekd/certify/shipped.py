"""Which epoch a trained model ships (trainer/keep.py decides; its evaluation says so under
`shipped`), read back by certification: the epoch, its held-out figures, and what
training_results.json says of it. A model trained before oneseekd kept the best epoch ships
its last."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from oneseekd.certify.gate import trained_figures

if TYPE_CHECKING:
    from oneseekd.certify.certified import Figures


def shipped_epoch(m: Figures) -> int:
    """The epoch (1-based) whose LoRA weights the model's outputs hold, and whose figures are
    certified: the one its evaluation names (trainer/keep.py `shipped`), else its last (a
    model trained before oneseekd kept the best epoch)."""
    shipped = m.evaluation.get("shipped")
    epoch = shipped.get("epoch") if isinstance(shipped, dict) else None
    last = len(m.val_losses)
    return epoch if isinstance(epoch, int) and 1 <= epoch <= last else last


def shipped_figures(m: Figures) -> dict[str, Any] | None:
    """The held-out figures of the shipped epoch: the trained model's."""
    epochs = m.evaluation.get("epochs") or []
    epoch = shipped_epoch(m)
    return epochs[epoch - 1] if 1 <= epoch <= len(epochs) else trained_figures(m.evaluation)


def shipped_of(m: Figures) -> dict[str, Any]:
    """training_results.json's `metrics.<key>.shipped`: which epoch the outputs hold and why."""
    shipped = m.evaluation.get("shipped")
    if isinstance(shipped, dict):
        return dict(shipped)
    last = len(m.val_losses)
    return {
        "epoch": last,
        "epochs": last,
        "keep": "last",
        "reason": "the last epoch: trained before oneseekd kept the best one",
    }
