"""Auto-stop on validation-loss sequences: the epoch it stops at, never before min_epochs."""

from __future__ import annotations

import json

import pytest

from oneseekd.trainer.autostop import AutoStop


def run(stop: AutoStop, losses: list[float]) -> int | None:
    """The epoch (1-based) after which training stops, or None if it runs them all."""
    for loss in losses:
        if stop.update(loss):
            return stop.stopped_at
    return None


def test_stops_after_patience_epochs_of_plateau() -> None:
    # improves by 0.5, 0.3, then less than 0.01 three times: stops after epoch 6
    losses = [3.0, 2.5, 2.2, 2.195, 2.19, 2.188, 2.0, 1.5]
    assert run(AutoStop(threshold=0.01, patience=3), losses) == 6


def test_an_improvement_resets_the_count() -> None:
    losses = [3.0, 2.999, 2.998, 2.5, 2.499, 2.498, 2.497]
    assert run(AutoStop(threshold=0.01, patience=3), losses) == 7


def test_never_before_min_epochs() -> None:
    flat = [2.0] * 6
    # patience 1 would stop after epoch 2 (the first epoch without improvement)
    assert run(AutoStop(threshold=0.01, patience=1), flat) == 2
    assert run(AutoStop(threshold=0.01, patience=1, min_epochs=4), flat) == 4
    assert run(AutoStop(threshold=0.01, patience=1, min_epochs=7), flat) is None


def test_a_rise_is_measured_against_the_best() -> None:
    # back to 2.0 after a rise is no improvement over the best 2.0
    losses = [2.0, 2.5, 2.0, 1.99]
    assert run(AutoStop(threshold=0.05, patience=3), losses) == 4


def test_steady_progress_runs_every_epoch() -> None:
    assert run(AutoStop(threshold=0.001, patience=3), [3.0 - 0.1 * i for i in range(10)]) is None


def test_state_survives_a_checkpoint() -> None:
    losses = [3.0, 2.5, 2.2, 2.195, 2.19, 2.188]
    whole = AutoStop(threshold=0.01, patience=3)
    assert run(whole, losses) == 6
    first = AutoStop(threshold=0.01, patience=3)
    run(first, losses[:4])
    saved = json.loads(json.dumps(first.state_dict()))  # as a checkpoint keeps it
    resumed = AutoStop(threshold=0.01, patience=3)
    resumed.load_state_dict(saved)
    assert run(resumed, losses[4:]) == 6
    assert resumed.state_dict() == whole.state_dict()
    assert resumed.info() == {
        "enabled": True,
        "threshold": 0.01,
        "patience": 3,
        "min_epochs": 2,
        "best_val_loss": 2.188,
        "epochs_without_improvement": 3,
        "stopped": True,
        "stopped_at_epoch": 6,
    }


def test_checkpoint_of_other_settings_is_refused() -> None:
    other = AutoStop(threshold=0.01, patience=3)
    with pytest.raises(ValueError, match="auto-stop settings"):
        AutoStop(threshold=0.01, patience=2).load_state_dict(other.state_dict())


def test_bad_settings() -> None:
    with pytest.raises(ValueError, match="patience >= 1"):
        AutoStop(threshold=0.01, patience=0)
