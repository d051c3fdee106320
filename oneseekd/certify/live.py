"""live_metrics.json in the seed's shape, where CivicAI's live leaderboard polls it:
`oneseek-certified/<run_id>/live_metrics.json`, atomically replaced after every epoch and at
each progress update while the run trains (docs/training.md, "Live metrics")."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from oneseekd.certify.dna import final_weights, weight_inputs
from oneseekd.certify.staging import write_json
from oneseekd.times import utc_text


def _number(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def live_document(
    train: dict[str, list[float]],
    val: dict[str, list[float]],
    total_epochs: int,
    *,
    weighting: str,
    progress_percent: float,
    now: datetime,
    running_loss: float | None = None,
    bits_per_byte: dict[str, list[float | None]] | None = None,
    step_losses: dict[str, list[float]] | None = None,
    auto_stop: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The seed's live metrics: `val_losses` and `weights` hold one number per model key (its
    latest validation loss, and the ensemble weight that gives); `total_loss` is the mean of
    the models' latest training losses (`running_loss`, the current epoch's so far, when given);
    `epoch` the furthest epoch any model finished. oneseekd adds `val_bits_per_byte` (each
    model's latest held-out bits per byte, what `bits_per_byte` weighting weighs),
    `step_losses` (every optimizer step's training loss, per model, for a live chart) and
    `auto_stop` (each model's auto-stop state, trainer/autostop.py `info`, for the models that
    asked for it)."""
    latest = {k: v[-1] for k, v in val.items() if v and math.isfinite(v[-1])}
    bpb = {
        k: v[-1]
        for k, v in (bits_per_byte or {}).items()
        if v and v[-1] is not None and math.isfinite(v[-1])
    }
    trains = [v[-1] for v in train.values() if v]
    total = (
        running_loss
        if running_loss is not None
        else (sum(trains) / len(trains) if trains else None)
    )
    return {
        "type": "epoch_end",
        "epoch": max((len(v) for v in val.values()), default=0),
        "total_epochs": total_epochs,
        "total_loss": _number(total),
        "val_losses": latest,
        "weights": final_weights(
            weight_inputs(latest, {k: bpb.get(k) for k in latest}, weighting), weighting
        ),
        "val_bits_per_byte": bpb,
        "step_losses": {k: [_number(x) for x in v] for k, v in (step_losses or {}).items()},
        "progress_percent": round(progress_percent, 2),
        "auto_stop_info": auto_stop_info(auto_stop or {}),
        "timestamp": utc_text(now),
    }


def auto_stop_info(models: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """live_metrics.json's `auto_stop_info`: enabled when any model asked for auto-stop,
    stopped when any stopped early (the epoch each stopped after is in its entry)."""
    if not models:
        return {"enabled": False, "stopped": False}
    return {
        "enabled": True,
        "stopped": any(info.get("stopped") for info in models.values()),
        "models": models,
    }


class LiveMetrics:
    """The run's live_metrics.json while it trains. `epoch_end` rewrites it after an epoch;
    `progress` at each progress update (the trainer's are about a second apart; CivicAI counts
    a run as active while the file is under 60 s old)."""

    def __init__(self, path: Path, total_epochs: int, models: int, weighting: str) -> None:
        self.path = path
        self.total_epochs = total_epochs
        self.models = max(models, 1)
        self.weighting = weighting
        self.train: dict[str, list[float]] = {}
        self.val: dict[str, list[float]] = {}
        self.bpb: dict[str, list[float | None]] = {}
        self.steps: dict[str, list[float]] = {}
        self.percent = 0.0
        self.running: float | None = None
        self.auto_stops: dict[str, dict[str, Any]] = {}

    def epoch_end(
        self,
        key: str,
        val_losses: list[float],
        train_losses: list[float] | None = None,
        bits_per_byte: list[float | None] | None = None,
        step_losses: list[float] | None = None,
    ) -> None:
        """After an epoch of `key` (the recipe tells the validation losses; the training loss
        is then the epoch's running loss last reported), or for a model an earlier attempt
        trained (both lists from its row)."""
        self.val[key] = list(val_losses)
        if bits_per_byte is not None:
            self.bpb[key] = list(bits_per_byte)
        if step_losses is not None:
            self.steps[key] = list(step_losses)
        if train_losses is not None:
            self.train[key] = list(train_losses)
        elif self.running is not None:
            self.train[key] = [*self.train.get(key, []), self.running]
        self.running = None
        self._write()

    def auto_stop(self, key: str, info: dict[str, Any]) -> None:
        """Auto-stop's state of `key` after its latest epoch (told right after epoch_end)."""
        self.auto_stops[key] = dict(info)
        self._write()

    def progress(self, data: dict[str, Any]) -> None:
        """A progress report of the trainer: model_index/models and step/steps give the share
        of the whole run done; loss the current epoch's running training loss."""
        steps = data.get("steps") or 0
        done = (data.get("step") or 0) / steps if steps else 0.0
        index = max(int(data.get("model_index") or 1), 1)
        self.percent = min(100.0, 100.0 * ((index - 1) + done) / self.models)
        loss = data.get("loss")
        self.running = float(loss) if isinstance(loss, int | float) else None
        self._write()

    def step(self, key: str, losses: list[float]) -> None:
        """Every optimizer step's training loss of `key` so far (the recipe's list, told after
        each step): written with the next progress update, not at each step."""
        self.steps[key] = losses

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json(
            self.path,
            live_document(
                self.train,
                self.val,
                self.total_epochs,
                weighting=self.weighting,
                progress_percent=self.percent,
                now=datetime.now(UTC),
                running_loss=self.running,
                bits_per_byte=self.bpb,
                step_losses=self.steps,
                auto_stop=self.auto_stops,
            ),
            strict=True,
        )
