"""micro_batch_size (issue 25): a batch in passes of fewer rows, asked or picked by the memory
plan ("auto": the largest divisor of the batch whose step fits the device), with the same
optimizer step, so a run that would not fit trains with the same effective batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from bigmodels import MODELS
from gloo import recipe
from test_recipe import UNEVEN
from trainhomes import cached_tiny

from oneseekd.intake.schema import parse_request
from oneseekd.spec.plan import fit_problem, micro_batch
from oneseekd.trainer import passes
from oneseekd.trainer import setup as trainer_setup

GIB = 2**30


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cached_tiny(tmp_path_factory.mktemp("models"), "Tiny-Llama", "llama")


def test_the_plan_picks_the_largest_divisor_of_the_batch_that_fits() -> None:
    def need(rows: int) -> int:
        return GIB + rows * GIB  # 1 GiB of weights, 1 GiB a row

    assert micro_batch(None, 8, need, 4 * GIB) == 8  # not asked: the whole batch
    assert micro_batch(3, 8, need, 4 * GIB) == 3  # asked: as asked
    assert micro_batch(12, 8, need, 4 * GIB) == 8  # never more than the batch
    assert micro_batch("auto", 8, need, 100 * GIB) == 8  # fits whole
    assert micro_batch("auto", 8, need, 6 * GIB) == 4  # 5 GiB of 6: within 85 %; 3 no divisor
    assert micro_batch("auto", 8, need, GIB) == 1  # nothing fits: the least there is
    assert micro_batch("auto", 8, need, None) == 8  # a CPU: no device memory to plan on


def test_the_option_is_a_row_count_or_auto() -> None:
    for value in (2, "auto", None, "4"):
        _, problems = parse_request(
            {"base_models": ["x"], "dataset": "d.jsonl", "micro_batch_size": value}
        )
        assert problems == [], value
    _, problems = parse_request({"base_models": ["x"], "dataset": "d.jsonl", "microBatchSize": 0})
    assert any("micro_batch_size" in p and '"auto"' in p for p in problems), problems


LLAMA_8B = MODELS["Llama-3.1-8B"]


def test_intake_accepts_what_auto_micro_batches_make_fit_and_suggests_them() -> None:
    options = {"batch_size": 8, "max_seq_len": 2048, "precision": "auto"}
    refused = fit_problem("llama", LLAMA_8B, options, 24 * GIB, gpu=True)
    assert refused is not None and 'micro_batch_size "auto" (here ' in refused
    assert (
        fit_problem("llama", LLAMA_8B, {**options, "micro_batch_size": "auto"}, 24 * GIB, True)
        is None
    )
    # nothing fits a GPU this small even at one row: refused all the same
    assert fit_problem("llama", LLAMA_8B, {**options, "micro_batch_size": "auto"}, 8 * GIB, True)


def _lora(r: object) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in r.model.named_parameters() if p.requires_grad}  # type: ignore[attr-defined]


def test_passes_of_fewer_rows_step_as_the_whole_batch_does(model: Path, tmp_path: Path) -> None:
    options = {"epochs": 1, "batch_size": 4, "gradient_accumulation_steps": 2}
    whole = recipe(model, UNEVEN, tmp_path / "whole", **options)
    whole.setup()
    whole.train()
    split = recipe(model, UNEVEN, tmp_path / "split", micro_batch_size=3, **options)
    split.setup()
    assert split.micro == 3  # passes of 3 and 1 rows
    split.train()
    assert split.position.step_losses == pytest.approx(whole.position.step_losses, rel=1e-5)
    a, b = _lora(whole), _lora(split)
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name


def test_auto_splits_the_batch_where_the_device_is_too_small_and_logs_why(
    model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a device whose memory fits a step of one row and not of two (of this tiny model)
    from oneseekd.spec.memory import Shape, step_bytes

    r = recipe(model, UNEVEN, tmp_path / "probe", batch_size=4)
    r.setup()
    weights = sum(p.numel() * p.element_size() for p in r.model.parameters())
    shape, held = Shape.from_config(r.config), r._held()
    one = step_bytes(weights, shape, 1 * 128, held, checkpointing=False)
    two = step_bytes(weights, shape, 2 * 128, held, checkpointing=False)
    memory = int((one + two) / 2 / 0.85)
    monkeypatch.setattr(trainer_setup, "device_memory", lambda device, index=0: memory)
    monkeypatch.setattr(passes, "wants_checkpointing", lambda asked, need, mem: False)
    logged: list[dict[str, object]] = []
    monkeypatch.setattr(
        passes.log, "info", lambda event, **kw: logged.append({"event": event, **kw})
    )
    auto = recipe(model, UNEVEN, tmp_path / "auto", batch_size=4, micro_batch_size="auto")
    auto.setup()
    assert auto.micro == 1
    [told] = [e for e in logged if e["event"] == "micro_batch"]
    assert (told["batch_size"], told["micro_batch_size"], told["passes"]) == (4, 1, 4)
    assert "would not fit" in str(told["why"])
