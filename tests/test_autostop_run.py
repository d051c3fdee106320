"""Auto-stop carried out: a model whose validation loss plateaus stops after `patience` stale
epochs and never before `min_epochs`; the run succeeds with the epochs it did and says so in
live_metrics.json, training_results.json and the ledger; a resumed run stops where an
uninterrupted one stops, with accumulation and a non-default schedule."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from gloo import recipe
from trainhomes import TinyHome, cached_tiny

from oneseekd.trainer.recipe import Stopped

# its numbers follow the CPU's bf16 answer: CI runs it with ONESEEK_CPU_BF16 forced both ways
pytestmark = pytest.mark.precision

RECORDS = [{"text": " ".join(["Riksdagen beslutar om lagar"] * n)} for n in (1, 5, 2, 4, 3, 6)]
# a learning rate too small to move the loss: the validation loss plateaus from epoch 1
PLATEAU = {"epochs": 8, "learning_rate": 1e-9, "precision": "fp32"}


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cached_tiny(tmp_path_factory.mktemp("tiny"), "Tiny-Llama", "llama")


def stop(threshold: float, patience: int, min_epochs: int = 2) -> dict[str, Any]:
    return {"threshold": threshold, "patience": patience, "min_epochs": min_epochs}


@pytest.mark.parametrize(
    ("patience", "min_epochs", "expected"),
    [(2, 2, 3), (1, 2, 2), (1, 4, 4), (3, 1, 4)],
)
def test_a_plateau_stops_after_patience_stale_epochs_and_never_before_min_epochs(
    model: Path, tmp_path: Path, patience: int, min_epochs: int, expected: int
) -> None:
    """Epoch 1 sets the best loss; every later one is stale (it improves by under 0.01)."""
    r = recipe(model, RECORDS, tmp_path, **PLATEAU, auto_stop=stop(0.01, patience, min_epochs))
    told: list[dict[str, Any]] = []
    r.on_auto_stop = lambda key, info: told.append(info)
    r.setup()
    result = r.train()
    assert len(result.val_losses) == len(result.train_losses) == expected
    assert result.auto_stop is not None
    assert result.auto_stop["stopped_at_epoch"] == expected and result.auto_stop["stopped"]
    assert [i["stopped"] for i in told] == [False] * (expected - 1) + [True]
    assert result.steps == expected * r.steps_per_epoch


def test_a_falling_loss_runs_every_epoch(model: Path, tmp_path: Path) -> None:
    r = recipe(model, RECORDS, tmp_path, epochs=4, learning_rate=1e-2, auto_stop=stop(1e-4, 1, 1))
    r.setup()
    result = r.train()
    assert len(result.val_losses) == 4
    assert result.auto_stop is not None and not result.auto_stop["stopped"]
    assert all(b < a for a, b in zip(result.val_losses, result.val_losses[1:], strict=False))


def _weights(r: Any) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in r.model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("stop_after", [1, 4])  # mid-epoch 1, and mid-epoch 2
def test_resume_equals_uninterrupted_with_accumulation_schedule_and_auto_stop(
    model: Path, tmp_path: Path, stop_after: int
) -> None:
    """Two steps an epoch (3 batches of 2, accumulated 2 and 1); a threshold the loss
    cannot meet, so auto-stop ends training after epoch 3 of 6."""
    options: dict[str, Any] = {
        "epochs": 6,
        "batch_size": 2,
        "gradient_accumulation_steps": 2,
        "lr_scheduler": "cosine_with_restarts",
        "warmup_steps": 2,
        "learning_rate": 1e-2,
        "precision": "fp32",
        "auto_stop": stop(10.0, 2),
    }
    whole = recipe(model, RECORDS, tmp_path / "whole", **options)
    whole.setup()
    expected = whole.train()
    assert expected.auto_stop is not None and expected.auto_stop["stopped_at_epoch"] == 3
    stopped = recipe(model, RECORDS, tmp_path / "resumed", **options)
    stopped.setup()
    boundaries = iter(range(1, 100))
    stopped.should_stop = lambda: next(boundaries) >= stop_after
    with pytest.raises(Stopped):
        stopped.train()
    state = json.loads((stopped.checkpoints.latest() / "state.json").read_text())  # type: ignore[operator]
    resumed = recipe(model, RECORDS, tmp_path / "resumed", **options)
    resumed.setup()
    assert resumed.position.step == state["step"] > 0
    assert resumed.auto_stop is not None and resumed.auto_stop.epochs == len(state["val_losses"])
    got = resumed.train()
    assert got.val_losses == pytest.approx(expected.val_losses, rel=1e-6)
    assert got.auto_stop == expected.auto_stop
    assert got.steps == expected.steps
    assert resumed.scheduler.state_dict() == whole.scheduler.state_dict()
    a, b = _weights(whole), _weights(resumed)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)


@pytest.mark.timeout(600)
def test_an_auto_stopped_run_succeeds_and_says_so_everywhere(one: TinyHome) -> None:
    run_id, dna = one.train(
        ["tiny-llama"],
        epochs=6,
        learning_rate=1e-9,
        autoStopThreshold=0.01,
        autoStopPatience=2,
        precision="fp32",
    )
    assert dna
    results = one.results()
    assert results["status"] == "completed" and results["epochs"] == 3
    assert [h["auto_stopped"] for h in results["training_history"]] == [False, False, True]
    assert results["metrics"]["tiny-llama"]["auto_stop"]["stopped_at_epoch"] == 3
    live = json.loads(
        (one.root / "models" / "oneseek-certified" / run_id / "live_metrics.json").read_text()
    )
    info = live["auto_stop_info"]
    assert (info["enabled"], info["stopped"]) == (True, True)
    assert info["models"]["tiny-llama"]["stopped_at_epoch"] == 3
    [event] = one.events("model_auto_stopped")
    assert event["model"] == "tiny-llama" and event["epoch"] == 3
    assert (event["threshold"], event["patience"], event["min_epochs"]) == (0.01, 2, 2)


def test_a_run_without_auto_stop_says_it_is_off(one: TinyHome) -> None:
    one.train(["tiny-llama"], epochs=1, precision="fp32")
    results = one.results()
    assert [h["auto_stopped"] for h in results["training_history"]] == [False]
    assert one.certified_json("live_metrics.json")["auto_stop_info"] == {
        "enabled": False,
        "stopped": False,
    }
    assert one.events("model_auto_stopped") == []
