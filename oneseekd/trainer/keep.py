"""Which epoch's LoRA weights a model ships (`keep`): the best on held-out data, or the last.

Training goes on past its best epoch: auto-stop ends it `patience` epochs after the best, and
without auto-stop a later epoch may simply be worse on held-out data. Shipping the last epoch
would certify a model the run itself measured to be worse than one it had. With `keep:
"best"` (the default) the LoRA weights of the best epoch so far are kept beside the
checkpoints (checkpoint.py `save_best`, so a resumed run still has them) and put back into the
model when training ends; the adapter, the .pth and every certified figure are then that
epoch's, and the certified files say which epoch it was and why (`shipped`).

"Best" is the lowest validation loss, the figure auto-stop watches. On one model's fixed
held-out rows it ranks the epochs as bits per byte does: both divide the same summed loss by
a count that does not change between epochs (target tokens, or their bytes). An earlier epoch
wins a tie. A run with no held-out rows (val_fraction 0) measures nothing that tells its
epochs apart, so it ships the last and says so; `keep: "last"` ships the last on request.
"""

from __future__ import annotations

from typing import Any

from oneseekd.trainer.checkpoint import Position


def better(pos: Position) -> bool:
    """Whether the epoch just evaluated (the last of `pos.val_losses`) has a lower held-out
    loss than the best one kept so far (always, when none is kept)."""
    if pos.best_epoch == 0:
        return True
    return pos.val_losses[-1] < pos.val_losses[pos.best_epoch - 1]


def choose(keep: str, measured: bool, pos: Position, stopped_at: int | None) -> tuple[int, str]:
    """The epoch (1-based) to ship and why, from what training measured. `measured`: the
    figures are on held-out rows; `stopped_at`: the epoch auto-stop ended training after."""
    last = len(pos.val_losses)
    if keep == "last":
        return last, 'keep: "last" asks for the last epoch trained'
    if not measured:
        return last, (
            "the last epoch: the run held out no validation rows (val_fraction 0), so nothing "
            "measured one epoch against another"
        )
    best = pos.best_epoch
    if best == 0:  # a resume from a checkpoint written before the best epoch was kept
        return last, "the last epoch: the weights of no earlier epoch were kept"
    loss = f"{pos.val_losses[best - 1]:.6g}"
    if last == 1:
        return 1, f"the only epoch trained (held-out validation loss {loss})"
    why = f"the lowest held-out validation loss of the {last} epochs trained ({loss})"
    if best == last:
        return best, why
    why += f"; the {last - best} after it did not improve on it"
    if stopped_at == last:
        why += f", and auto-stop ended training after epoch {last}"
    return best, why


def gone(epoch: int) -> str:
    """Why the last epoch ships although an earlier one was better: its weights are lost."""
    return (
        f"the last epoch: epoch {epoch} had the lowest held-out validation loss, but its kept "
        "weights are gone from the run's checkpoint folder"
    )


def shipped(epoch: int, epochs: int, keep: str, reason: str) -> dict[str, Any]:
    """`shipped` of a model's evaluation: which of its `epochs` it ships, and why."""
    return {"epoch": epoch, "epochs": epochs, "keep": keep, "reason": reason}
