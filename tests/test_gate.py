"""Issue 18 on tiny models: every run is measured against its base on held-out data, a run
that did not improve is certified but never made current (and every surface says why),
`require_improvement` refuses it, `promote` overrides with a recorded reason, and the
evaluation is the same across a resume."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from trainhomes import TinyHome, stop_at

from oneseekd.certify.gate import IMPROVED, SAME, WORSE, NotImproved, method, shown_difference
from oneseekd.trainer.recipe import Stopped
from oneseekd.trainer.run import train_run

# its numbers follow the CPU's bf16 answer: CI runs it with ONESEEK_CPU_BF16 forced both ways
pytestmark = pytest.mark.precision

MODEL = "tiny-llama"
CANNOT_LEARN = {"learning_rate": 1e-9}  # far too small to move the weights
LEARNS = {"learning_rate": 2e-2}


class Home(TinyHome):
    """A home with a tiny Llama; `certify` is its [certify] section."""

    def __init__(self, root: Path, cache: Path, certify: str = "") -> None:
        section = f"[certify]\n{certify}\n" if certify else ""
        super().__init__(root, cache, {"Tiny-Llama": "llama"}, section)

    @property
    def certified(self) -> Path:
        return self.config.home.certified

    def folder(self, run_id: str) -> Path:
        return self.certified / os.readlink(self.certified / run_id)

    def current(self) -> str:
        return os.readlink(self.certified / "OneSeek-7B-Zero-CURRENT")

    def ledger_ok(self) -> bool:
        return bool(self.ctl("ledger", "verify").exit_code == 0)


@pytest.fixture
def home(tmp_path: Path, cache: Path) -> Iterator[Home]:
    made = Home(tmp_path / "home", cache)
    yield made
    made.engine.dispose()


def _model(results: dict[str, Any]) -> dict[str, Any]:
    metrics: dict[str, Any] = results["metrics"][MODEL]
    return metrics


def _compared(found: dict[str, Any], trained: float, other: float, verdict: str) -> None:
    """One comparison of the gate: the two figures apart, its 95 % interval around that, and
    the verdict the interval gives."""
    assert found["difference"] == pytest.approx(trained - other, abs=1e-9)
    low, high = found["interval"]
    assert low <= found["difference"] <= high
    assert found["verdict"] == verdict


@pytest.mark.timeout(600)
def test_a_run_that_learns_is_made_current_and_one_that_cannot_is_not(home: Home) -> None:
    learned, _ = home.train([MODEL], **LEARNS)
    results = home.certified_json("training_results.json", learned)
    ev = _model(results)["evaluation"]
    base, trained = ev["base"], ev["trained"]
    assert trained["bits_per_byte"] < base["bits_per_byte"]
    assert ev["bits_per_byte_gain"] == pytest.approx(
        base["bits_per_byte"] - trained["bits_per_byte"]
    )
    assert trained["loss"] == _model(results)["val_losses"][-1]
    assert trained["accuracy"] > base["accuracy"] and trained["perplexity"] > 1
    assert ev["held_out"]["split"] == "validation" and ev["held_out"]["rows"] == 16
    assert len(trained["record_bits"]) == len(ev["held_out"]["record_bytes"]) == 16
    gate = results["gate"]
    [(key, judged)] = gate["models"].items()
    assert (key, judged["records"], judged["target_bytes"]) == (
        MODEL,
        16,
        ev["held_out"]["target_bytes"],
    )
    _compared(judged["base"], trained["bits_per_byte"], base["bits_per_byte"], IMPROVED)
    assert judged["base"]["interval"][1] < 0 and "current" not in judged  # nothing current yet
    assert gate == {
        "beat_base": True,
        "not_worse_than_current": True,
        "made_current": True,
        "reasons": [],
        "models": {MODEL: judged},
        "method": method(),
    }
    # the verdict and its interval on every surface: metadata.json, the ledger, status, show
    assert home.certified_json("metadata.json", learned)["gate"] == gate
    [event] = home.events("dna_v2_training_completed")
    assert event["gate"] == gate
    note = f"{MODEL}: against its base {shown_difference(judged['base'])}: improved"
    assert f"          gate: {note}" in home.ctl("status").output
    recent = json.loads(home.ctl("status", "--json").output)["recent_runs"][0]
    assert (recent["held_back"], recent["gate"]) == (None, gate)
    assert f"            {note}" in home.ctl("show", learned).output
    first = home.folder(learned).name
    assert home.current() == first
    # every optimizer step's training loss: 8 steps an epoch, 3 epochs
    assert len(_model(results)["step_losses"]) == _model(results)["steps"] == 24
    live = home.certified_json("live_metrics.json", learned)
    assert live["step_losses"][MODEL] == _model(results)["step_losses"]
    assert live["val_bits_per_byte"][MODEL] == trained["bits_per_byte"]
    metadata = home.certified_json("metadata.json", learned)
    assert metadata["metrics"] == {
        "loss": trained["loss"],
        "accuracy": trained["accuracy"],
        "fairness": None,
    }
    signed = home.certified_json("oneseek_dna.json", learned)
    assert signed["evaluation"][MODEL]["trained"] == trained
    assert signed["gate"]["made_current"] is True
    samples = home.certified_json("samples.json", learned)["models"][MODEL]
    assert 1 <= len(samples) <= 3
    for sample in samples:
        assert set(sample) == {"record", "prompt", "reference", "base", "trained"}
        assert sample["record"].startswith("line ")
        assert "### Instruction" in sample["prompt"] or "<|user|>" in sample["prompt"]
    assert home.ledger_ok()

    stuck, _ = home.train([MODEL], **CANNOT_LEARN)
    results = home.certified_json("training_results.json", stuck)
    ev = _model(results)["evaluation"]
    bpb = ev["trained"]["bits_per_byte"]
    now = ev["current"]  # the current (learned) model, measured on this run's rows
    assert (now["dna"], now["run_id"]) == (first, learned)
    gate = results["gate"]
    judged = gate["models"][MODEL]
    # it did not learn: no measurable difference from its base, which holds it back
    _compared(judged["base"], bpb, ev["base"]["bits_per_byte"], SAME)
    # and it is measurably worse than the current model, on this run's records
    _compared(judged["current"], bpb, now["figures"]["bits_per_byte"], WORSE)
    assert (judged["current"]["dna"], judged["current"]["run_id"]) == (first, learned)
    reasons = [
        f"{MODEL}: held-out bits per byte {bpb:.4f} does not measurably beat the base model's "
        f"{ev['base']['bits_per_byte']:.4f}: {shown_difference(judged['base'])}",
        f"{MODEL}: held-out bits per byte {bpb:.4f} is worse than the current model's "
        f"{now['figures']['bits_per_byte']:.4f} ({first}, run {learned}) on this run's "
        f"held-out data: {shown_difference(judged['current'])}",
    ]
    why = "; ".join(reasons)
    assert gate == {
        "beat_base": False,
        "not_worse_than_current": False,
        "made_current": False,
        "reasons": reasons,
        "models": {MODEL: judged},
        "method": method(),
    }
    assert home.current() == first  # recorded, certified, not current
    # ... and every surface says so: metadata.json, the ledger event, status, runs, show
    assert home.certified_json("metadata.json", stuck)["gate"] == gate
    [_, event] = home.events("dna_v2_training_completed")
    assert (event["current"], event["gate"]) == (False, gate)
    assert event["bits_per_byte"][MODEL] == {
        "base": ev["base"]["bits_per_byte"],
        "trained": ev["trained"]["bits_per_byte"],
    }
    status = home.ctl("status")
    assert f"not made current: {why}" in status.output
    assert json.loads(home.ctl("status", "--json").output)["recent_runs"][0]["held_back"] == why
    runs = home.ctl("runs")
    assert f"{stuck} was not made current: {why}" in runs.output
    listed = {r["run_id"]: r for r in json.loads(home.ctl("runs", "--json").output)}
    assert (listed[stuck]["held_back"], listed[stuck]["gate"]) == (why, gate)
    assert listed[learned]["held_back"] is None and listed[learned]["current"]
    show = home.ctl("show", stuck)
    assert f"  gate:     was not made current: {why}" in show.output
    assert "every model measurably beat its base" in home.ctl("show", learned).output

    # promote: refused without a reason, done with one, and the reason recorded
    refused = home.ctl("promote", stuck)
    assert refused.exit_code != 0
    assert f"run {stuck} was not made current when it was certified: {why}" in refused.stderr
    assert f'oneseekctl promote {stuck} --reason "..."' in refused.stderr
    done = home.ctl("promote", stuck, "--reason", "the operator checked the samples")
    assert done.exit_code == 0, done.output
    assert home.current() == home.folder(stuck).name
    [promoted] = home.events("model_promoted")
    assert (promoted["reason"], promoted["overrides_gate"]) == (
        "the operator checked the samples",
        why,
    )
    assert f"{stuck} was not made current, promoted since: {why}" in home.ctl("runs").output


@pytest.mark.timeout(600)
def test_a_run_worse_than_the_current_model_on_its_held_out_data_is_not_made_current(
    home: Home,
) -> None:
    best, _ = home.train([MODEL], **LEARNS)
    first = home.current()
    weaker, _ = home.train([MODEL], **{**LEARNS, "epochs": 1})
    ev = _model(home.certified_json("training_results.json", weaker))["evaluation"]
    assert ev["trained"]["bits_per_byte"] < ev["base"]["bits_per_byte"] * 0.9999  # it learned
    now = ev["current"]
    assert (now["dna"], now["run_id"]) == (first, best)
    # the current model measured on this run's rows (the same seed: the same split)
    assert now["figures"]["tokens"] == ev["trained"]["tokens"]
    assert now["figures"]["bits_per_byte"] < ev["trained"]["bits_per_byte"]
    gate = home.certified_json("training_results.json", weaker)["gate"]
    assert (gate["beat_base"], gate["not_worse_than_current"], gate["made_current"]) == (
        True,
        False,
        False,
    )
    versus = gate["models"][MODEL]["current"]
    _compared(versus, ev["trained"]["bits_per_byte"], now["figures"]["bits_per_byte"], WORSE)
    assert gate["reasons"] == [
        f"{MODEL}: held-out bits per byte {ev['trained']['bits_per_byte']:.4f} is worse than "
        f"the current model's {now['figures']['bits_per_byte']:.4f} ({first}, run {best}) on "
        f"this run's held-out data: {shown_difference(versus)}"
    ]
    assert home.current() == first


@pytest.mark.timeout(600)
def test_require_improvement_refuses_to_certify_a_run_that_did_not_improve(
    tmp_path: Path, cache: Path
) -> None:
    home = Home(tmp_path / "home", cache, "require_improvement = true")
    try:
        run_id = home.start([MODEL], **CANNOT_LEARN)
        with pytest.raises(NotImproved) as refused:
            train_run(home.engine, home.config.home, run_id)
        [trained] = home.events("model_trained")  # recorded, with its figures
        ev = trained["evaluation"]
        base = ev["base"]["bits_per_byte"]
        last = ev["epochs"][-1]["bits_per_byte"]
        [why] = [line for line in str(refused.value).splitlines() if "base model's" in line]
        assert why.startswith(
            f"  - {MODEL}: held-out bits per byte {last:.4f} does not measurably beat the base "
            f"model's {base:.4f}: "
        )
        assert str(refused.value) == (
            f"run {run_id} is not certified: a model did not beat its base on held-out bits "
            "per byte, and [certify] require_improvement is true\n"
            f"{why}\n"
            "  - train longer, with a higher learning_rate or on more data, and submit again\n"
            "  - or set [certify] require_improvement = false: the run is then certified, but "
            "not made current"
        )
        assert refused.value.exit_code == 65  # refused, not retried
        assert home.events("dna_v2_training_completed") == []
        # no certified folder; <run_id> is still the live folder the supervisor removes
        assert not (home.certified / run_id).is_symlink()
        assert not [p for p in home.certified.iterdir() if p.name.startswith("OneSeek-7B-Zero.v")]
    finally:
        home.engine.dispose()


@pytest.mark.timeout(600)
def test_the_evaluation_is_the_same_across_a_resume(tmp_path: Path, cache: Path) -> None:
    whole = Home(tmp_path / "whole", cache)
    cut = Home(tmp_path / "cut", cache)
    try:
        uninterrupted, _ = whole.train([MODEL])
        run_id = cut.start([MODEL])

        # stopped at step 4 (before the first epoch's evaluation), then after epoch 2's
        with pytest.raises(Stopped):
            train_run(cut.engine, cut.config.home, run_id, should_stop=stop_at(4))
        with pytest.raises(Stopped):
            train_run(cut.engine, cut.config.home, run_id, should_stop=stop_at(16))
        train_run(cut.engine, cut.config.home, run_id)
        a = _model(whole.certified_json("training_results.json", uninterrupted))
        b = _model(cut.certified_json("training_results.json", run_id))
        assert a["evaluation"] == b["evaluation"]
        assert a["step_losses"] == b["step_losses"]
        assert (
            whole.certified_json("samples.json", uninterrupted)["models"]
            == cut.certified_json("samples.json", run_id)["models"]
        )
    finally:
        whole.engine.dispose()
        cut.engine.dispose()


@pytest.mark.timeout(600)
def test_a_run_with_no_held_out_rows_is_not_measured_certified_and_never_made_current(
    home: Home,
) -> None:
    # issue 26, item 6: scored on the rows it trained on, it was certified "beat its base"
    # and made current
    run_id, _ = home.train([MODEL], **{**LEARNS, "val_fraction": 0})
    results = home.certified_json("training_results.json", run_id)
    assert _model(results)["evaluation"]["held_out"]["split"] == "train"
    held = _model(results)["evaluation"]["held_out"]
    # the val_fraction that would hold out 10 records and 256 bytes at these records' bytes each
    per_record = held["target_bytes"] / held["rows"]
    needed = max(10, math.ceil(256 / per_record))
    fraction = math.ceil(100 * needed / 48) / 100
    why = (
        f"{MODEL}: not measured: the run held out no validation rows (val_fraction 0, or every "
        "record a copy of one), so there is no verdict on whether it beat its base; "
        f"val_fraction {fraction:.2f} would hold out enough ({needed} of the 48 records); it "
        "is certified, not made current"
    )
    gate = {
        "beat_base": False,
        "not_worse_than_current": True,
        "made_current": False,
        "reasons": [why],
        "models": {
            MODEL: {
                "verdict": "not measured",
                "records": held["rows"],
                "target_bytes": held["target_bytes"],
                "val_fraction": fraction,
            }
        },
        "method": method(),
        "measured": False,
    }
    assert results["gate"] == gate
    assert home.certified_json("metadata.json", run_id)["gate"] == gate
    assert not os.path.lexists(home.certified / "OneSeek-7B-Zero-CURRENT")
    assert f"not made current: {why}" in home.ctl("status").output
    assert f"  gate:     was not made current: {why}" in home.ctl("show", run_id).output
    assert home.ledger_ok()
