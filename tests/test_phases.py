"""Every phase of a run outside its steps is shown (issue 30, item 3): in the progress that
`oneseekctl status` reads (its name and count), as an event in the run log, and in the ETA."""

from __future__ import annotations

import logging
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs
from trainhomes import TinyHome

from oneseekd.cli.status import describe_progress
from oneseekd.trainer import phases


@pytest.fixture
def reports(progress_reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return progress_reports


@pytest.fixture
def logged() -> Iterator[list[MutableMapping[str, Any]]]:
    """The events logged meanwhile, info included: an earlier test may have set structlog to
    warnings (the CLI's full machinery does)."""
    before = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        with capture_logs() as events:
            yield events
    finally:
        structlog.configure(**before)


@pytest.mark.timeout(400)
def test_every_phase_after_the_steps_is_reported_logged_and_counted(
    tmp_path: Path, cache: Path, reports: list[dict[str, Any]], logged: list[Any]
) -> None:
    home = TinyHome(tmp_path / "home", cache, {"Tiny-Llama": "llama"})
    try:
        home.train(["llama"], epochs=1)  # made current: the next run compares with it
        reports.clear()
        logged.clear()
        home.train(["llama"], epochs=2)
    finally:
        home.engine.dispose()
    started = [e["phase"] for e in logged if e["event"] == "phase_started"]
    assert started == [
        phases.BASE,
        phases.TRAINED,
        phases.TRAINED,
        phases.COMPARING,
        phases.SAMPLES,
        phases.CERTIFYING,
    ]
    finished = [e["phase"] for e in logged if e["event"] == "phase_finished"]
    assert finished == started
    # the progress names each phase with its count, after the last step as before it
    named = [r for r in reports if r.get("phase")]
    assert {r["phase"] for r in named} == set(phases.ORDER)
    last_step = max(r["step"] for r in reports if r.get("step") is not None)
    compare = [r for r in named if r["phase"] == phases.COMPARING]
    assert compare[0]["step"] == last_step and compare[0]["unit"] == "batches"
    assert compare[-1]["done"] == compare[-1]["total"] > 0
    # while the samples are written, nothing timed is left: no evaluation counted twice
    for r in named:
        if r["phase"] == phases.SAMPLES:
            assert (r["eta_s"], r["eta_excludes"]) == (0.0, [phases.CERTIFYING])
    # after the base evaluation was timed, the ETA counts the evaluations to come and
    # says which phases it does not count
    stepping = [r for r in reports if r.get("step") and not r.get("phase")]
    assert stepping and all("evaluation" not in r["eta_excludes"] for r in stepping)
    assert all(phases.CERTIFYING in r["eta_excludes"] for r in stepping)
    # the run log has a periodic progress event (the first report is always one)
    [first] = [e for e in logged if e["event"] == "progress"][:1]
    assert {"step", "loss", "tokens_per_s"} <= set(first)


def test_the_eta_counts_the_evaluations_ahead_and_names_what_it_does_not() -> None:
    timing = phases.Timing(evaluation_seconds=10.0)
    ahead = phases.Ahead(steps=4, step_seconds=2.0, evaluations=2, compares=True, samples=True)
    assert phases.eta(ahead, timing) == (8.0 + 3 * 10.0, [phases.SAMPLES, phases.CERTIFYING])
    # nothing measured an evaluation yet: not guessed, named
    unknown = phases.eta(ahead, phases.Timing())
    assert unknown == (8.0, ["evaluation", phases.SAMPLES, phases.CERTIFYING])
    # half of the last evaluation left, nothing after it but certifying
    last = phases.Ahead(steps=0, step_seconds=2.0, evaluations=0, evaluation_left=0.5)
    assert phases.eta(last, timing) == (5.0, [phases.CERTIFYING])


def test_status_names_the_phase_with_its_count() -> None:
    progress = {
        "model": "llama",
        "model_index": 1,
        "models": 1,
        "epoch": 2,
        "epochs": 2,
        "step": 6,
        "steps": 6,
        "loss": 1.5,
        "tokens_per_s": 812.0,
        "eta_s": 40,
        "eta_excludes": [phases.SAMPLES, phases.CERTIFYING],
        "device": "cpu/float32",
        "phase": phases.TRAINED,
        "done": 3,
        "total": 12,
        "unit": "batches",
    }
    assert describe_progress(progress) == (
        "llama (1/1) [####################] evaluating held-out: trained 3/12 batches, "
        "epoch 2/2, step 6/6, loss 1.5, 812.0 tok/s, ETA 40s (not counting writing samples, "
        "certifying) on cpu/float32"
    )
    certifying = {"model": None, "state": "certifying", "phase": phases.CERTIFYING}
    assert describe_progress(certifying).startswith("certifying")
