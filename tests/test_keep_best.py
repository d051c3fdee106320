"""`keep`: a model ships its best epoch on held-out data, not its last (issue 27, item 4).

Auto-stop ends training `patience` epochs after the best one; before `keep`, the adapter, the
.pth, the gate's trained figures and final_weights were the last epoch's. Here the held-out
evaluation's loss is forced to a curve (the real evaluation runs, then its figures are set),
so which epoch is best is known, and each epoch's LoRA weights are taken as they were when
that epoch was evaluated, to compare with what the run ships."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from gloo import CPU, HYPER, recipe, spawn
from peft import get_peft_model_state_dict
from safetensors.torch import load_file
from trainhomes import TinyHome, cached_tiny

from oneseekd.certify.certified import TrainedModel, weighed
from oneseekd.certify.dna import final_weights
from oneseekd.certify.gate import judge, trained_figures
from oneseekd.certify.live import live_document
from oneseekd.trainer.checkpoint import Checkpoints, Position
from oneseekd.trainer.context import ModelSpec
from oneseekd.trainer.data import Records
from oneseekd.trainer.recipe import LoraRecipe, Placement, Reporting, Stopped, Task
from oneseekd.trainer.run import train_run
from oneseekd.trainer.world import World

# the runs train in the precision "auto" picks: CI runs them with ONESEEK_CPU_BF16 both ways
pytestmark = pytest.mark.precision

MODEL = "tiny-llama"
# the curve: the best is epoch 2, and auto-stop (patience 3) ends training after 5
CURVE = [1.00, 0.95, 0.96, 0.97, 0.98]
STOP = {"threshold": 0.001, "patience": 3, "min_epochs": 2}
# an epoch's bits per byte is the base model's times loss / PAR: epoch 2 beats the base by
# about 2 %, epoch 4 only equals it and epoch 5 is worse, so the gate's verdict says which
# epoch it judged
PAR = 0.97


class Forced:
    """LoraRecipe.evaluate with its figures forced to `curve` (by epoch), and every epoch's
    LoRA weights (as peft saves them: the .pth's form) when that epoch was evaluated; a
    sharded model's as the recipe gathers them whole (`_lora`, on rank 0). `monkeypatch` is a
    test's, or None in a rank process (which ends with the test)."""

    def __init__(
        self, curve: list[float], monkeypatch: pytest.MonkeyPatch | None, sharded: bool = False
    ) -> None:
        self.curve = curve
        self.weights: dict[int, dict[str, torch.Tensor]] = {}
        real = LoraRecipe.evaluate

        def evaluate(recipe: LoraRecipe, pad_id: int) -> float:
            real(recipe, pad_id)
            epoch = recipe.position.epoch + 1
            loss = curve[epoch - 1]
            base = recipe.position.base_eval or {}
            recipe.position.evals[-1].update(
                loss=loss,
                perplexity=math.exp(loss),
                bits_per_byte=base["bits_per_byte"] * loss / PAR,
            )
            if sharded:  # every rank gathers
                self.weights[epoch] = recipe._lora()
            else:
                self.weights[epoch] = {
                    k: v.detach().clone()
                    for k, v in get_peft_model_state_dict(recipe.model).items()
                }
            return loss

        if monkeypatch is None:
            LoraRecipe.evaluate = evaluate  # type: ignore[method-assign]
        else:
            monkeypatch.setattr(LoraRecipe, "evaluate", evaluate)


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


def _outputs(home: TinyHome) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The run's .pth and its adapter's weights."""
    zero = home.models / "oneseek-7b-zero"
    [pth] = (zero / "weights").glob(f"*-{MODEL}.pth")
    adapter = load_file(zero / "lora_adapters" / f"{MODEL}-adapter" / "adapter_model.safetensors")
    return torch.load(pth, weights_only=True), adapter


def _shipped(results: dict[str, Any]) -> dict[str, Any]:
    shipped: dict[str, Any] = results["metrics"][MODEL]["shipped"]
    return shipped


# --- a whole run ----------------------------------------------------------------------------
@pytest.mark.timeout(600)
def test_an_auto_stopped_run_certifies_its_best_epoch(
    one: TinyHome, monkeypatch: pytest.MonkeyPatch
) -> None:
    forced = Forced(CURVE, monkeypatch)
    run_id, _ = one.train([MODEL], epochs=8, auto_stop=STOP)
    results = one.results(run_id)
    metrics = results["metrics"][MODEL]
    assert metrics["val_losses"] == CURVE  # every epoch trained is still reported
    assert metrics["auto_stop"]["stopped_at_epoch"] == 5
    assert _shipped(results) == {
        "epoch": 2,
        "epochs": 5,
        "keep": "best",
        "reason": "the lowest held-out validation loss of the 5 epochs trained (0.95); the 3 "
        "after it did not improve on it, and auto-stop ended training after epoch 5",
    }
    ev = metrics["evaluation"]
    best = ev["epochs"][1]
    assert (ev["trained_epoch"], ev["trained"], best["loss"]) == (2, best, 0.95)
    assert ev["bits_per_byte_gain"] == ev["base"]["bits_per_byte"] - best["bits_per_byte"]
    assert results["final_loss"] == metrics["train_losses"][1]
    # the gate judged epoch 2, which beats the base (epoch 5 does not)
    assert results["gate"]["beat_base"] and results["gate"]["made_current"]
    [done] = one.events("dna_v2_training_completed")
    assert done["bits_per_byte"][MODEL]["trained"] == best["bits_per_byte"]
    assert one.certified_json("oneseek_dna.json", run_id)["evaluation"][MODEL]["trained"] == best
    assert one.certified_json("metadata.json", run_id)["metrics"] == {
        "loss": 0.95,
        "accuracy": best["accuracy"],
        "fairness": None,
    }
    live = one.certified_json("live_metrics.json", run_id)
    assert live["val_losses"] == {MODEL: 0.95}
    assert live["val_bits_per_byte"] == {MODEL: best["bits_per_byte"]}
    assert (live["shipped_epochs"], live["epoch"]) == ({MODEL: 2}, 5)
    # the adapter and the .pth hold epoch 2's weights, which training moved on from
    pth, adapter = _outputs(one)
    assert _equal(pth, forced.weights[2]) and _equal(adapter, forced.weights[2])
    assert not _equal(pth, forced.weights[5])
    [trained] = one.events("model_trained")
    assert trained["evaluation"]["shipped"]["epoch"] == 2


@pytest.mark.timeout(600)
def test_keep_last_ships_the_last_epoch_as_before(
    one: TinyHome, monkeypatch: pytest.MonkeyPatch
) -> None:
    forced = Forced(CURVE, monkeypatch)
    run_id, _ = one.train([MODEL], epochs=8, auto_stop=STOP, keep="last")
    results = one.results(run_id)
    assert _shipped(results) == {
        "epoch": 5,
        "epochs": 5,
        "keep": "last",
        "reason": 'keep: "last" asks for the last epoch trained',
    }
    ev = results["metrics"][MODEL]["evaluation"]
    assert (ev["trained_epoch"], ev["trained"]) == (5, ev["epochs"][4])
    assert not results["gate"]["beat_base"]  # epoch 5 is worse than the base
    pth, adapter = _outputs(one)
    assert _equal(pth, forced.weights[5]) and _equal(adapter, forced.weights[5])
    assert not (one.root / "checkpoints" / run_id).exists()


@pytest.mark.timeout(600)
def test_a_run_stopped_after_epoch_3_resumes_and_still_ships_its_best_epoch(
    one: TinyHome, monkeypatch: pytest.MonkeyPatch
) -> None:
    forced = Forced(CURVE, monkeypatch)
    run_id = one.start([MODEL], epochs=8, auto_stop=STOP)
    with pytest.raises(Stopped):  # asked to stop once epoch 3 is evaluated: after its end
        train_run(one.engine, one.config.home, run_id, should_stop=lambda: len(forced.weights) >= 3)
    folder = one.root / "checkpoints" / run_id / MODEL
    latest = Checkpoints(folder).latest()
    assert latest is not None
    state = json.loads((latest / "state.json").read_text())
    assert (state["epoch"], state["batch"], state["best_epoch"]) == (3, 0, 2)
    # epoch 1's weights are dropped once no kept checkpoint names them
    assert [p.name for p in folder.glob("best-e*.pt")] == ["best-e2.pt"]
    epoch_2 = forced.weights[2]
    forced.weights.clear()  # the next attempt starts a new process's worth of memory
    train_run(one.engine, one.config.home, run_id)
    assert sorted(forced.weights) == [4, 5]  # it trained on from epoch 4
    results = one.results(run_id)
    assert results["metrics"][MODEL]["val_losses"] == CURVE
    assert _shipped(results)["epoch"] == 2
    pth, adapter = _outputs(one)
    assert _equal(pth, epoch_2) and _equal(adapter, epoch_2)
    assert results["gate"]["made_current"]


# --- the recipe -----------------------------------------------------------------------------
RECORDS = [{"text": " ".join(["Riksdagen beslutar om lagar"] * n)} for n in (1, 5, 2, 4, 3, 6)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cached_tiny(tmp_path_factory.mktemp("tiny"), "Tiny-Llama", "llama")


def held_recipe(model: Path, folder: Path, world: World | None = None, **hyper: Any) -> LoraRecipe:
    """A recipe with the last two records held out."""
    return LoraRecipe(
        Task(
            ModelSpec(MODEL, "Tiny-Llama", model, ""),
            {**HYPER, **hyper},
            Records(RECORDS, [f"line {i + 1}" for i in range(len(RECORDS))]),
            ([0, 1, 2, 3], [4, 5]),
        ),
        Placement(CPU, Checkpoints(folder), world or World()),
        Reporting(SimpleNamespace(report=lambda *a, **k: None)),  # type: ignore[arg-type]
    )


def _lora(r: LoraRecipe) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(r.model).items()}


def test_without_auto_stop_a_worse_last_epoch_is_not_shipped(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forced = Forced([1.0, 0.9, 0.95], monkeypatch)
    r = held_recipe(tiny, tmp_path / "ck", epochs=3)
    r.setup()
    result = r.train()
    assert result.val_losses == [1.0, 0.9, 0.95]
    assert result.evaluation["shipped"] == {
        "epoch": 2,
        "epochs": 3,
        "keep": "best",
        "reason": "the lowest held-out validation loss of the 3 epochs trained (0.9); the 1 "
        "after it did not improve on it",
    }
    assert _equal(_lora(r), forced.weights[2]) and not _equal(_lora(r), forced.weights[3])


def sharded_best(world: World, model: Path, folder: Path) -> Any:
    """A rank of a two-process FSDP run over a forced curve: what it ships, the weights it
    gathers for the outputs (rank 0), and each epoch's."""
    forced = Forced([1.0, 0.9, 0.95], None, sharded=True)
    r = held_recipe(model, folder, world, epochs=3, sharding="fsdp")
    r.setup()
    result = r.train()
    assert r.sharded
    return result.evaluation["shipped"], result.trainable, forced.weights


@pytest.mark.timeout(300)
def test_a_sharded_model_ships_its_best_epoch(tiny: Path, tmp_path: Path) -> None:
    """Each rank puts the kept weights back into its shards; rank 0 gathers them whole."""
    ranks = spawn(sharded_best, 2, tmp_path / "out", tiny, tmp_path / "ck")
    assert [shipped["epoch"] for shipped, _, _ in ranks] == [2, 2]
    _, trainable, weights = ranks[0]
    assert _equal(trainable, weights[2]) and not _equal(trainable, weights[3])


def test_an_improving_run_keeps_its_last_epoch(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forced = Forced([1.0, 0.9, 0.8], monkeypatch)
    r = held_recipe(tiny, tmp_path / "ck", epochs=3)
    r.setup()
    result = r.train()
    assert result.evaluation["shipped"]["epoch"] == 3
    assert _equal(_lora(r), forced.weights[3])


def test_with_no_held_out_rows_the_last_epoch_ships_and_says_why(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Measured on the rows it trained on, a lower loss says nothing of a better model."""
    forced = Forced([1.0, 0.9, 0.95], monkeypatch)
    r = recipe(tiny, RECORDS, tmp_path / "ck", epochs=3)  # every record in training
    r.setup()
    result = r.train()
    assert result.evaluation["held_out"]["split"] == "train"
    assert result.evaluation["shipped"] == {
        "epoch": 3,
        "epochs": 3,
        "keep": "best",
        "reason": "the last epoch: the run held out no validation rows (val_fraction 0), so "
        "nothing measured one epoch against another",
    }
    assert _equal(_lora(r), forced.weights[3])
    assert not list((tmp_path / "ck").glob("best-e*.pt"))


def test_kept_weights_lost_from_the_checkpoints_ship_the_last_epoch_and_say_so(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forced = Forced([1.0, 0.9, 0.95], monkeypatch)
    r = held_recipe(tiny, tmp_path / "ck", epochs=3)
    r.setup()
    real = r.checkpoints.load_best
    r.checkpoints.load_best = lambda epoch: None  # type: ignore[method-assign]
    result = r.train()
    assert real(2) is not None  # it was kept; the recipe was told it is gone
    assert result.evaluation["shipped"]["epoch"] == 3
    assert (
        "epoch 2 had the lowest held-out validation loss, but its kept weights are gone"
        in (result.evaluation["shipped"]["reason"])
    )
    assert _equal(_lora(r), forced.weights[3])


# --- the checkpoints ------------------------------------------------------------------------
def _save(checkpoints: Checkpoints, position: Position) -> Path:
    scheduler = SimpleNamespace(state_dict=lambda: {})
    return checkpoints.save({"w": torch.zeros(1)}, {}, scheduler, None, position)


def test_the_best_weights_stay_while_a_kept_checkpoint_names_them(tmp_path: Path) -> None:
    checkpoints = Checkpoints(tmp_path / "ck")
    checkpoints.save_best({"w": torch.zeros(2)}, 1)
    _save(checkpoints, Position(epoch=1, step=3, best_epoch=1))
    checkpoints.save_best({"w": torch.ones(2)}, 2)
    _save(checkpoints, Position(epoch=2, step=6, best_epoch=2))
    # the checkpoint before the newest still names epoch 1: a damaged newest falls back to it
    assert sorted(p.name for p in (tmp_path / "ck").glob("best-e*")) == ["best-e1.pt", "best-e2.pt"]
    _save(checkpoints, Position(epoch=2, batch=1, step=7, best_epoch=2))
    assert sorted(p.name for p in (tmp_path / "ck").glob("best-e*")) == ["best-e2.pt"]
    kept = checkpoints.load_best(2)
    assert kept is not None and torch.equal(kept["w"], torch.ones(2))
    assert checkpoints.load_best(1) is None
    assert not list((tmp_path / "ck").glob(".*.tmp"))


# --- what is certified from the shipped epoch -----------------------------------------------
def _trained(key: str, val: list[float], bpb: list[float], shipped: int | None) -> TrainedModel:
    rows = 12  # enough held-out records for the gate's verdict, each of 100 target bytes

    def figures(bits_per_byte: float) -> dict[str, Any]:  # each record's bits, a little spread
        bits = [bits_per_byte * 100 + (i % 3 - 1) * 0.5 for i in range(rows)]
        return {"bits_per_byte": bits_per_byte, "record_bits": bits}

    evaluation: dict[str, Any] = {
        "held_out": {
            "split": "validation",
            "rows": rows,
            "target_bytes": 100 * rows,
            "record_bytes": [100] * rows,
        },
        "base": figures(0.8),
        "epochs": [{"loss": v, **figures(b)} for v, b in zip(val, bpb, strict=True)],
    }
    if shipped is not None:
        evaluation["shipped"] = {"epoch": shipped, "epochs": len(val), "keep": "best"}
    return TrainedModel(
        key,
        [2.0] * len(val),
        val,
        1,
        1,
        1.0,
        0.0,
        [],
        evaluation=evaluation,
        display_name=key,
        base_path=Path("."),
    )


def test_final_weights_gate_and_live_metrics_take_the_shipped_epoch() -> None:
    a = _trained("a", [1.0, 0.5, 0.9], [1.0, 0.5, 0.9], 2)
    b = _trained("b", [0.7, 0.7], [0.7, 0.7], None)  # trained before `shipped`: its last
    assert weighed([a, b], "bits_per_byte") == {"a": 0.5, "b": 0.7}
    assert weighed([a, b], "val_loss") == {"a": 0.5, "b": 0.7}
    weights = final_weights(weighed([a, b], "bits_per_byte"), "bits_per_byte")
    assert weights["a"] > weights["b"]  # epoch 2's 0.5 bits per byte, not epoch 3's 0.9
    # the gate's trained figures: epoch 2's 0.5 beats the base's 0.8; epoch 3's 0.9 would not
    assert judge([a], True).beat_base
    assert trained_figures(a.evaluation) == a.evaluation["epochs"][1]
    # a model trained before `shipped` existed is judged on its last epoch
    unshipped = {k: v for k, v in a.evaluation.items() if k != "shipped"}
    assert not judge([replace(a, evaluation=unshipped)], True).beat_base
    live = live_document(
        {"a": a.train_losses, "b": b.train_losses},
        {"a": a.val_losses, "b": b.val_losses},
        3,
        weighting="val_loss",
        progress_percent=100.0,
        now=datetime(2026, 1, 1, tzinfo=UTC),
        bits_per_byte={"a": [1.0, 0.5, 0.9], "b": [0.7, 0.7]},
        shipped={"a": 2, "b": 2},
    )
    assert live["val_losses"] == {"a": 0.5, "b": 0.7}
    assert live["val_bits_per_byte"] == {"a": 0.5, "b": 0.7}
    assert (live["epoch"], live["shipped_epochs"]) == (3, {"a": 2, "b": 2})
