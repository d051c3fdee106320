"""Auto-stop: end a model's training once validation stops improving.

CivicAI's rule (trainingConfig.js): stop once the validation loss improves by less than
`threshold` for `patience` consecutive epochs, never before `min_epochs`. "Improves" is
measured against the best loss so far, so a loss that rises and then comes back to where it
was does not count as progress. The state is small and goes into every checkpoint, so a
resumed run stops at the same epoch an uninterrupted one does.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class AutoStop:
    threshold: float  # the least improvement of the validation loss that counts
    patience: int  # epochs in a row without it before stopping
    min_epochs: int = 2
    best: float | None = None
    stale: int = 0  # consecutive epochs that improved by less than the threshold
    epochs: int = 0  # epochs seen
    stopped_at: int | None = None  # the epoch (1-based) after which training stopped
    history: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.threshold < 0 or self.patience < 1 or self.min_epochs < 1:
            raise ValueError(
                "auto-stop needs threshold >= 0, patience >= 1 and min_epochs >= 1 "
                f"(got {self.threshold}, {self.patience}, {self.min_epochs})"
            )

    def update(self, val_loss: float) -> bool:
        """Record the validation loss of the epoch just finished; True when training stops
        here. Once stopped it stays stopped."""
        self.epochs += 1
        self.history.append(float(val_loss))
        if self.best is None or self.best - val_loss >= self.threshold:
            self.stale = 0
        else:
            self.stale += 1
        if self.best is None or val_loss < self.best:
            self.best = float(val_loss)
        if (
            self.stopped_at is None
            and self.stale >= self.patience
            and self.epochs >= self.min_epochs
        ):
            self.stopped_at = self.epochs
        return self.stopped_at is not None

    @property
    def stopped(self) -> bool:
        return self.stopped_at is not None

    def info(self) -> dict[str, Any]:
        """`auto_stop_info` of live_metrics.json."""
        return {
            "enabled": True,
            "threshold": self.threshold,
            "patience": self.patience,
            "min_epochs": self.min_epochs,
            "best_val_loss": self.best,
            "epochs_without_improvement": self.stale,
            "stopped": self.stopped,
            "stopped_at_epoch": self.stopped_at,
        }

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The counters of a checkpoint; the settings must be the run's own."""
        settings = (state["threshold"], state["patience"], state["min_epochs"])
        if settings != (self.threshold, self.patience, self.min_epochs):
            raise ValueError(
                f"the checkpoint's auto-stop settings {settings} are not this run's "
                f"{(self.threshold, self.patience, self.min_epochs)}"
            )
        self.best = state["best"]
        self.stale = int(state["stale"])
        self.epochs = int(state["epochs"])
        self.stopped_at = state["stopped_at"]
        self.history = [float(x) for x in state["history"]]


def disabled_info() -> dict[str, Any]:
    """`auto_stop_info` of a run that did not ask for auto-stop."""
    return {"enabled": False}
