"""bench/faketrack.py, the fake-tensor check of the memory plan's 7-8B table, kept from
rotting: its own code path (the model built on the meta device and faked, the trainer's step
and evaluation under MemTracker) on a tiny Llama, in a few seconds. At this size the same code
also runs on real tensors, which is what shows that the fake trace measures what a real step
holds."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from peakmem import peak_bytes

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import faketrack

TINY: dict[str, Any] = {
    "model_type": "llama",
    "num_hidden_layers": 2,
    "hidden_size": 64,
    "intermediate_size": 176,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "vocab_size": 512,
    "tie_word_embeddings": False,
}
BATCH, SEQ = 2, 128


@pytest.fixture(scope="module")
def fake() -> faketrack.Measured:
    return faketrack.measure(TINY, BATCH, SEQ, fake=True)


def test_the_fake_trace_holds_what_real_tensors_hold(fake: faketrack.Measured) -> None:
    # the same model, batch, step and evaluation in real tensors: MemTracker's peaks agree
    # to the byte, so a fake 8B trace is what the CPU would hold at that size
    assert faketrack.measure(TINY, BATCH, SEQ, fake=False) == fake
    assert fake.step_on < fake.step_off
    assert 0 < fake.evaluation < fake.step_on


def test_memtracker_counts_what_the_cpu_tests_count(fake: faketrack.Measured) -> None:
    # tests/test_spec_memory.py holds the plan to tests/peakmem.py's peak: MemTracker (with
    # the frozen parameters counted) sees the same bytes of a real step
    model = faketrack.build(TINY, False, None)
    optimizer = faketrack.build_optimizer("adamw_torch", model, 1e-4)
    data = faketrack.Batch.make(TINY["vocab_size"], BATCH, SEQ, None)
    faketrack.train_step(model, optimizer, data)
    state = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
    held = [*model.parameters(), *model.buffers(), *state]
    assert peak_bytes(lambda: faketrack.train_step(model, optimizer, data), held) == (fake.step_off)


def test_the_plan_is_within_15_percent_of_the_trace_at_a_tiny_shape(
    fake: faketrack.Measured,
) -> None:
    p = faketrack.predicted(TINY, BATCH, SEQ)
    assert p.step_off == pytest.approx(fake.step_off, rel=0.15)
    assert p.step_on == pytest.approx(fake.step_on, rel=0.15)
    assert p.evaluation == pytest.approx(fake.evaluation, rel=0.15)


def test_fewer_layers_extrapolate_to_the_full_depth() -> None:
    # --layers: from two layers on, every term of a peak grows linearly with the layers, or
    # not at all (one layer is off the line, and refused)
    deep = {**TINY, "num_hidden_layers": 8}
    assert faketrack.measure_deep(deep, BATCH, SEQ, 4) == faketrack.measure(deep, BATCH, SEQ)
    with pytest.raises(ValueError, match="at least 4 layers"):
        faketrack.measure_deep(deep, BATCH, SEQ, 2)


def test_the_table_says_predicted_and_measured(fake: faketrack.Measured) -> None:
    p = faketrack.predicted(TINY, BATCH, SEQ)
    rows = faketrack.rows("tiny", TINY, BATCH, SEQ, None)
    assert [r[1:] for r in rows] == [
        ("step, ckpt off", p.step_off, fake.step_off),
        ("step, ckpt on", p.step_on, fake.step_on),
        ("evaluation", p.evaluation, fake.evaluation),
    ]
    text = faketrack.table(rows)
    assert f"| tiny | {BATCH} x {SEQ} | step, ckpt off |" in text
    assert text.endswith(f"| {p.evaluation / fake.evaluation:.3f} |")


def test_the_docs_table_says_what_the_plan_predicts_today() -> None:
    # docs/performance.md's traced table (bench/faketrack.py at full depth: too long for the
    # suite) keeps its predicted column, and so its ratios, true to spec/plan.py: a change of
    # the plan's coefficients shows here as a stale page, to be traced again and pasted
    from bigmodels import MODELS

    docs = (Path(__file__).resolve().parent.parent / "docs" / "performance.md").read_text()
    phases = {"step, ckpt off": "step_off", "step, ckpt on": "step_on", "evaluation": "evaluation"}
    found = 0
    for line in docs.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) != 6 or cells[2] not in phases:
            continue
        name, tokens, phase, want, got, ratio = cells
        batch, seq = (int(n) for n in tokens.split(" x "))
        p = getattr(faketrack.predicted(MODELS[name], batch, seq), phases[phase])
        assert want == f"{p / faketrack.GIB:.2f} GiB", f"{name} {tokens} {phase}: stale"
        measured = float(got.removesuffix(" GiB")) * faketrack.GIB
        assert float(ratio) == pytest.approx(p / measured, abs=0.002)
        assert float(ratio) == pytest.approx(1, abs=0.15)
        found += 1
    assert found == 3 * 2 * len(MODELS)
