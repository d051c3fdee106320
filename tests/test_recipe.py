"""The recipe's numbers: precision, checkpointing, accumulation, dropout per rank, NaN, and
checkpoint fallback; over two gloo ranks where ranks matter."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from gloo import dropout_masks, recipe, spawn, window_gradients
from trainhomes import cached_tiny

from oneseekd.certify.staging import write_json
from oneseekd.intake.schema import parse_request
from oneseekd.trainer.checkpoint import Checkpoints, Position
from oneseekd.trainer.loading import pick_device, wants_checkpointing
from oneseekd.trainer.onemodel import TrainingDiverged, check_finite
from oneseekd.trainer.recipe import ModelResult, Stopped, loss_sum

# its numbers follow the CPU's bf16 answer: CI runs it with ONESEEK_CPU_BF16 forced both ways
pytestmark = pytest.mark.precision

GIB = 1024**3


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cached_tiny(tmp_path_factory.mktemp("tiny"), "Tiny-Llama", "llama")


# rows of very different lengths, so that a token's weight would show if it depended on its
# row or micro-batch; 7 rows in batches of 2 with 3 per window: a whole window, then a
# partial one of a single row
UNEVEN = [{"text": " ".join(["Riksdagen beslutar om lagar"] * n)} for n in (1, 9, 2, 6, 1, 12, 3)]
BATCHES = [[0, 1], [2, 3], [4, 5], [6]]


@pytest.mark.parametrize(("major", "dtype"), [(7, torch.float16), (8, torch.bfloat16)])
def test_bf16_only_where_the_gpu_computes_in_it(
    monkeypatch: pytest.MonkeyPatch, major: int, dtype: torch.dtype
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(major=major))
    monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda device: True)
    device = pick_device()  # a V100 emulates bf16: fp16 with a gradient scaler there
    assert (device.type, device.dtype, device.scaler) == ("cuda", dtype, major < 8)


def test_gradient_checkpointing_is_on_when_a_step_would_not_fit_the_gpu_and_can_be_forced() -> None:
    need = 30 * GIB  # a step without checkpointing (spec.memory.step_bytes)
    assert wants_checkpointing(None, need, 24 * GIB)
    assert not wants_checkpointing(None, need, 40 * GIB)  # 30 of 40: within 85 %
    assert wants_checkpointing(None, need, 35 * GIB)  # 30 of 35: over 85 %
    assert not wants_checkpointing(None, need, None)  # the CPU: no device memory to spare
    assert not wants_checkpointing(False, need, 24 * GIB)  # forced off
    assert wants_checkpointing(True, GIB, None)  # forced on
    request, problems = parse_request({"base_models": ["x"], "dataset": "d.jsonl"})
    assert problems == [] and request is not None and request.gradient_checkpointing is None


def test_forced_checkpointing_recomputes_activations_and_the_default_on_the_cpu_does_not(
    model: Path, tmp_path: Path
) -> None:
    forced = recipe(model, UNEVEN, tmp_path / "a", gradient_checkpointing=True)
    forced.setup()
    assert forced.checkpointing and forced.model.get_base_model().is_activation_checkpointing
    default = recipe(model, UNEVEN, tmp_path / "b", gradient_checkpointing=None)
    default.setup()
    assert not default.checkpointing
    assert not default.model.get_base_model().is_activation_checkpointing


def _close(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    assert len(pairs) == 2  # a whole window and the partial last one
    for got, want in pairs:
        assert float(torch.linalg.vector_norm(want)) > 0
        error = float(torch.linalg.vector_norm(got - want) / torch.linalg.vector_norm(want))
        assert error < 1e-4, error


def test_an_accumulated_step_is_the_token_mean_gradient_of_the_whole_window(
    model: Path, tmp_path: Path
) -> None:
    from oneseekd.trainer.world import World

    _close(window_gradients(World(), model, UNEVEN, BATCHES, tmp_path))


@pytest.mark.timeout(300)
def test_two_gloo_ranks_step_with_the_token_mean_gradient_of_the_whole_window(
    model: Path, tmp_path: Path
) -> None:
    ranks = spawn(window_gradients, 2, tmp_path / "out", model, UNEVEN, BATCHES, tmp_path)
    for pairs in ranks:
        _close(pairs)


@pytest.mark.timeout(300)
def test_each_rank_draws_its_own_dropout_masks(model: Path, tmp_path: Path) -> None:
    first, second = spawn(dropout_masks, 2, tmp_path / "out", model, UNEVEN, tmp_path)
    assert 1000 < sum(first) < 3000 and 1000 < sum(second) < 3000  # p = 0.5 of 4096
    assert first != second


def test_a_batch_without_labels_adds_nothing_and_nan_never_reaches_a_certified_file(
    tmp_path: Path,
) -> None:
    logits = torch.randn(2, 5, 11, requires_grad=True)
    nothing = loss_sum(logits, torch.full((2, 5), -100))
    assert float(nothing.detach()) == 0.0  # a token mean over no tokens would be NaN
    nothing.backward()
    assert logits.grad is not None and not logits.grad.isnan().any()
    losses = ([2.0, math.nan], [2.1, 2.0])
    diverged = ModelResult("tiny-llama", *losses, 4, 99, 1.0, 0.1, [], None, None)
    with pytest.raises(TrainingDiverged) as err:
        check_finite(diverged)
    assert str(err.value) == (
        "tiny-llama: the training loss of epoch 2 is nan: training diverged, and nothing of "
        "it is certified\n  - submit the request again with a lower learning_rate"
    )
    with pytest.raises(ValueError):
        write_json(tmp_path / "x.json", {"loss": math.inf}, strict=True)  # as certify writes
    assert not (tmp_path / "x.json").exists()


def _save(checkpoints: Checkpoints, position: Position) -> Path:
    scheduler = SimpleNamespace(state_dict=lambda: {})
    return checkpoints.save({"w": torch.zeros(1)}, {}, scheduler, None, position)


def test_latest_naming_a_missing_folder_falls_back_to_the_newest_valid_checkpoint(
    tmp_path: Path,
) -> None:
    checkpoints = Checkpoints(tmp_path / "ck")
    older = _save(checkpoints, Position(step=9, batch=9))
    newer = _save(checkpoints, Position(step=10, batch=10))
    assert checkpoints.latest() == newer
    (tmp_path / "ck" / "latest").write_text("step-00000011-e0b11")  # a folder lost
    assert checkpoints.latest() == newer
    for path in newer.iterdir():  # one half-removed: not valid
        path.unlink()
    assert checkpoints.latest() == older
    (tmp_path / "ck" / "latest").unlink()
    assert checkpoints.latest() == older


def test_an_unchanged_position_is_never_saved_twice(tmp_path: Path) -> None:
    checkpoints = Checkpoints(tmp_path / "ck")
    first = _save(checkpoints, Position(step=4, batch=4, loss_sum=1.0))
    inode = os.stat(first / "state.json").st_ino
    again = _save(checkpoints, Position(step=4, batch=4, loss_sum=1.0))
    assert again == first and os.stat(first / "state.json").st_ino == inode
    assert json.loads((first / "state.json").read_text())["step"] == 4


def test_a_stop_on_a_checkpoint_step_writes_that_checkpoint_once(
    model: Path, tmp_path: Path
) -> None:
    r = recipe(model, UNEVEN, tmp_path / "ck", gradient_accumulation_steps=1, checkpoint_every=2)
    r.setup()
    saves: list[Position] = []
    save = r.checkpoints.save

    def counted(*args: object) -> Path:
        saves.append(args[4])  # type: ignore[arg-type]
        return save(*args)  # type: ignore[arg-type]

    r.checkpoints.save = counted  # type: ignore[method-assign]
    stops = iter([False, True])
    r.should_stop = lambda: next(stops)
    with pytest.raises(Stopped):
        r.train()
    assert [p.step for p in saves] == [2]  # the stop at step 2 did not save step 2 again


def _lora_weights(r: object) -> dict[str, torch.Tensor]:
    model = r.model  # type: ignore[attr-defined]
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_resume_equals_uninterrupted_with_accumulation_and_a_non_default_schedule(
    model: Path, tmp_path: Path
) -> None:
    """The spec's optimizer options reach the recipe, and their state (the linear schedule's
    position, sgd's momentum-free state, weight decay) is in the checkpoint: a run stopped
    mid-epoch and resumed ends with the weights of one that never stopped."""
    options = {
        "epochs": 2,
        "gradient_accumulation_steps": 2,
        "lr_scheduler": "linear",
        "warmup_steps": 1,
        "weight_decay": 0.1,
        "max_grad_norm": 0.5,
        "optimizer": "adamw_torch",
    }
    whole = recipe(model, UNEVEN, tmp_path / "whole", **options)
    whole.setup()
    assert type(whole.scheduler).__name__ == "LambdaLR"
    assert whole.optimizer.param_groups[0]["weight_decay"] == 0.1
    whole.train()
    lrs = [whole.scheduler.get_last_lr()[0]]
    stopped = recipe(model, UNEVEN, tmp_path / "resumed", **options)
    stopped.setup()
    stops = iter([False, False, True])
    stopped.should_stop = lambda: next(stops, True)
    with pytest.raises(Stopped):
        stopped.train()
    resumed = recipe(model, UNEVEN, tmp_path / "resumed", **options)
    resumed.setup()
    assert resumed.position.step > 0  # it did resume from the stop's checkpoint
    resumed.train()
    assert resumed.scheduler.get_last_lr()[0] == pytest.approx(lrs[0])
    a, b = _lora_weights(whole), _lora_weights(resumed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name
    # and the schedule is not the default's: the linear decay ends at 0
    assert lrs[0] == pytest.approx(0.0)


def test_all_linear_targets_every_linear_layer_but_the_head_and_rslora_scales_by_sqrt_r(
    model: Path, tmp_path: Path
) -> None:
    r = recipe(
        model,
        UNEVEN,
        tmp_path / "ck",
        lora={"r": 4, "alpha": 8, "target_modules": "all-linear", "use_rslora": True},
    )
    r.setup()
    assert r.targets == [
        "down_proj",
        "gate_proj",
        "k_proj",
        "o_proj",
        "q_proj",
        "up_proj",
        "v_proj",
    ]
    config = r.model.peft_config["default"]
    assert config.use_rslora and set(config.target_modules) == set(r.targets)
    layer = r.model.get_base_model().model.layers[0].mlp.down_proj
    assert layer.scaling["default"] == pytest.approx(8 / math.sqrt(4))
