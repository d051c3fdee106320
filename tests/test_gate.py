"""Issue 18 on tiny models: every run is measured against its base on held-out data, a run
that did not improve is certified but never made current (and every surface says why),
`require_improvement` refuses it, `promote` overrides with a recorded reason, and the
evaluation is the same across a resume."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine
from trainhomes import FAST, stop_at, tiny_home

from oneseekd import queue
from oneseekd.catalog.live import Catalog
from oneseekd.catalog.scan import model_roots
from oneseekd.certify.gate import NotImproved
from oneseekd.cli import main as ctl
from oneseekd.config import Config, load_config
from oneseekd.db.engine import make_engine
from oneseekd.db.migrate import upgrade
from oneseekd.intake.accept import Intake
from oneseekd.trainer.recipe import Stopped
from oneseekd.trainer.run import train_run

MODEL = "tiny-llama"
CANNOT_LEARN = {"learning_rate": 1e-9}  # far too small to move the weights
LEARNS = {"learning_rate": 2e-2}


class Home:
    def __init__(self, root: Path, cache: Path, certify: str = "") -> None:
        tiny_home(root, cache, {"Tiny-Llama": "llama"})
        if certify:
            with (root / "oneseekd.toml").open("a") as fh:
                fh.write(f"[certify]\n{certify}\n")
        self.config: Config = load_config(root, env={})
        self.config.home.ensure()
        self.engine: Engine = make_engine(self.config.db_url)
        upgrade(self.engine)
        Catalog(self.engine, model_roots(self.config), settle=0).full_scan()
        self.pks: dict[str, int] = {}

    @property
    def certified(self) -> Path:
        return self.config.home.certified

    def train(self, **fields: object) -> str:
        """Submit, claim and train one run; returns its run id."""
        run_id = self.start(**fields)
        train_run(self.engine, self.config.home, run_id)
        queue.finish(self.engine, self.pks[run_id], "succeeded", outcome="succeeded")
        return run_id

    def start(self, **fields: object) -> str:
        body = {"base_models": [MODEL], "dataset": "civic.jsonl", **FAST, **fields}
        verdict = Intake(self.engine, self.config.home).take_bytes(
            json.dumps(body).encode(), source="submit"
        )
        assert verdict.run_id, verdict.problems
        claimed = queue.claim_next(self.engine, None)
        assert claimed is not None and claimed.run_id == verdict.run_id
        self.pks[verdict.run_id] = claimed.id
        return verdict.run_id

    def folder(self, run_id: str) -> Path:
        return self.certified / os.readlink(self.certified / run_id)

    def doc(self, run_id: str, name: str) -> Any:
        return json.loads((self.folder(run_id) / name).read_text())

    def current(self) -> str:
        return os.readlink(self.certified / "OneSeek-7B-Zero-CURRENT")

    def events(self, name: str) -> list[dict[str, Any]]:
        con = sqlite3.connect(self.config.home.db_file)
        try:
            rows = con.execute(
                "SELECT payload FROM ledger_events WHERE event = ? ORDER BY seq", (name,)
            ).fetchall()
        finally:
            con.close()
        return [json.loads(r[0]) for r in rows]

    def ledger_ok(self) -> bool:
        return bool(self.ctl("ledger", "verify").exit_code == 0)

    def ctl(self, *args: str) -> Any:
        return CliRunner().invoke(ctl, ["--home", str(self.config.home.root), *args])


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny-models")


@pytest.fixture
def home(tmp_path: Path, cache: Path) -> Iterator[Home]:
    made = Home(tmp_path / "home", cache)
    yield made
    made.engine.dispose()


def _model(results: dict[str, Any]) -> dict[str, Any]:
    metrics: dict[str, Any] = results["metrics"][MODEL]
    return metrics


@pytest.mark.timeout(600)
def test_a_run_that_learns_is_made_current_and_one_that_cannot_is_not(home: Home) -> None:
    learned = home.train(**LEARNS)
    results = home.doc(learned, "training_results.json")
    ev = _model(results)["evaluation"]
    base, trained = ev["base"], ev["trained"]
    assert trained["bits_per_byte"] < base["bits_per_byte"]
    assert ev["bits_per_byte_gain"] == pytest.approx(
        base["bits_per_byte"] - trained["bits_per_byte"]
    )
    assert trained["loss"] == _model(results)["val_losses"][-1]
    assert trained["accuracy"] > base["accuracy"] and trained["perplexity"] > 1
    assert ev["held_out"]["split"] == "validation" and ev["held_out"]["rows"] == 16
    assert results["gate"] == {
        "beat_base": True,
        "not_worse_than_current": True,
        "made_current": True,
        "reasons": [],
    }
    first = home.folder(learned).name
    assert home.current() == first
    # every optimizer step's training loss: 8 steps an epoch, 3 epochs
    assert len(_model(results)["step_losses"]) == _model(results)["steps"] == 24
    live = home.doc(learned, "live_metrics.json")
    assert live["step_losses"][MODEL] == _model(results)["step_losses"]
    assert live["val_bits_per_byte"][MODEL] == trained["bits_per_byte"]
    metadata = home.doc(learned, "metadata.json")
    assert metadata["metrics"] == {
        "loss": trained["loss"],
        "accuracy": trained["accuracy"],
        "fairness": None,
    }
    signed = home.doc(learned, "oneseek_dna.json")
    assert signed["evaluation"][MODEL]["trained"] == trained
    assert signed["gate"]["made_current"] is True
    samples = home.doc(learned, "samples.json")["models"][MODEL]
    assert 1 <= len(samples) <= 3
    for sample in samples:
        assert set(sample) == {"record", "prompt", "reference", "base", "trained"}
        assert sample["record"].startswith("line ")
        assert "### Instruction" in sample["prompt"] or "<|user|>" in sample["prompt"]
    assert home.ledger_ok()

    stuck = home.train(**CANNOT_LEARN)
    results = home.doc(stuck, "training_results.json")
    ev = _model(results)["evaluation"]
    assert not ev["trained"]["bits_per_byte"] < ev["base"]["bits_per_byte"] * 0.9999
    bpb = ev["trained"]["bits_per_byte"]
    now = ev["current"]  # the current (learned) model, measured on this run's rows
    assert (now["dna"], now["run_id"]) == (first, learned)
    reasons = [
        f"{MODEL}: held-out bits per byte {bpb:.4f} does not beat the base model's "
        f"{ev['base']['bits_per_byte']:.4f}",
        f"{MODEL}: held-out bits per byte {bpb:.4f} is worse than the current model's "
        f"{now['figures']['bits_per_byte']:.4f} ({first}, run {learned}) on this run's "
        "held-out data",
    ]
    why = "; ".join(reasons)
    gate = {
        "beat_base": False,
        "not_worse_than_current": False,
        "made_current": False,
        "reasons": reasons,
    }
    assert results["gate"] == gate
    assert home.current() == first  # recorded, certified, not current
    # ... and every surface says so: metadata.json, the ledger event, status, runs, show
    assert home.doc(stuck, "metadata.json")["gate"] == gate
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
    assert "every model beat its base" in home.ctl("show", learned).output

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
    best = home.train(**LEARNS)
    first = home.current()
    weaker = home.train(**{**LEARNS, "epochs": 1})
    ev = _model(home.doc(weaker, "training_results.json"))["evaluation"]
    assert ev["trained"]["bits_per_byte"] < ev["base"]["bits_per_byte"] * 0.9999  # it learned
    now = ev["current"]
    assert (now["dna"], now["run_id"]) == (first, best)
    # the current model measured on this run's rows (the same seed: the same split)
    assert now["figures"]["tokens"] == ev["trained"]["tokens"]
    assert now["figures"]["bits_per_byte"] < ev["trained"]["bits_per_byte"]
    gate = home.doc(weaker, "training_results.json")["gate"]
    assert (gate["beat_base"], gate["not_worse_than_current"], gate["made_current"]) == (
        True,
        False,
        False,
    )
    assert gate["reasons"] == [
        f"{MODEL}: held-out bits per byte {ev['trained']['bits_per_byte']:.4f} is worse than "
        f"the current model's {now['figures']['bits_per_byte']:.4f} ({first}, run {best}) on "
        "this run's held-out data"
    ]
    assert home.current() == first


@pytest.mark.timeout(600)
def test_require_improvement_refuses_to_certify_a_run_that_did_not_improve(
    tmp_path: Path, cache: Path
) -> None:
    home = Home(tmp_path / "home", cache, "require_improvement = true")
    try:
        run_id = home.start(**CANNOT_LEARN)
        with pytest.raises(NotImproved) as refused:
            train_run(home.engine, home.config.home, run_id)
        [trained] = home.events("model_trained")  # recorded, with its figures
        ev = trained["evaluation"]
        base = ev["base"]["bits_per_byte"]
        last = ev["epochs"][-1]["bits_per_byte"]
        assert str(refused.value) == (
            f"run {run_id} is not certified: a model did not beat its base on held-out bits "
            "per byte, and [certify] require_improvement is true\n"
            f"  - {MODEL}: held-out bits per byte {last:.4f} does not beat the base model's "
            f"{base:.4f}\n"
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
        uninterrupted = whole.train()
        run_id = cut.start()

        # stopped at step 4 (before the first epoch's evaluation), then after epoch 2's
        with pytest.raises(Stopped):
            train_run(cut.engine, cut.config.home, run_id, should_stop=stop_at(4))
        with pytest.raises(Stopped):
            train_run(cut.engine, cut.config.home, run_id, should_stop=stop_at(16))
        train_run(cut.engine, cut.config.home, run_id)
        a = _model(whole.doc(uninterrupted, "training_results.json"))
        b = _model(cut.doc(run_id, "training_results.json"))
        assert a["evaluation"] == b["evaluation"]
        assert a["step_losses"] == b["step_losses"]
        assert (
            whole.doc(uninterrupted, "samples.json")["models"]
            == cut.doc(run_id, "samples.json")["models"]
        )
    finally:
        whole.engine.dispose()
        cut.engine.dispose()
