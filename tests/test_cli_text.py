"""What an operator reads: `show` and `status` as human text with one source of truth per
screen, and `submit` naming its flags."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from homes import ctl_text, home_with_a_queued_run, training_home

from oneseekd.config import load_config
from oneseekd.daemon.lock import HomeLock

PROGRESS = {
    "model": "kb-llama-3-1-8b-swedish",
    "model_index": 1,
    "models": 1,
    "epoch": 2,
    "epochs": 2,
    "step": 3,
    "steps": 6,
    "loss": 4.36512,
    "tokens_per_s": 812.0,
    "eta_s": 169.0,
    "device": "cpu/float32",
    "updated_at": "2026-12-01T22:00:00.000000Z",
}


@pytest.fixture
def queued(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    yield home_with_a_queued_run(tmp_path / "home")


def _set(home: Path, run_id: str, **columns: object) -> None:
    con = sqlite3.connect(home / "oneseek.db")
    for column, value in columns.items():
        con.execute(f"UPDATE runs SET {column} = ? WHERE run_id = ?", (value, run_id))
    con.commit()
    con.close()


def test_show_reads_as_text_without_repeating_the_state(queued: tuple[Path, str]) -> None:
    home, run_id = queued
    _set(
        home,
        run_id,
        state="succeeded",
        outcome="succeeded",
        progress=json.dumps(
            {"model": None, "state": "certified", "dna": "OneSeek-7B-Zero.v1.0.abc123"}
        ),
    )
    code, out, _ = ctl_text(home, "show", run_id)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"run {run_id}: succeeded"
    assert "  last step: certified as OneSeek-7B-Zero.v1.0.abc123" in lines
    assert "{" not in out  # no raw JSON
    _set(home, run_id, state="failed", outcome="oom", progress=json.dumps(PROGRESS))
    code, out, _ = ctl_text(home, "show", run_id)
    lines = out.splitlines()
    assert lines[0] == f"run {run_id}: failed (oom)"
    at = lines.index(
        "  last step: kb-llama-3-1-8b-swedish (1/1) [##########..........] epoch 2/2, "
        "step 3/6, loss 4.36512, 812.0 tok/s, ETA 2m49s on cpu/float32"
    )
    assert lines[at + 1] == "            as of 2026-12-01 22:00:00"  # the one human format


def test_status_shows_the_step_once_from_the_run_itself(queued: tuple[Path, str]) -> None:
    """The daemon's heartbeat names a step too, but may lag the run's progress: only the run's
    own line carries the step."""
    home, run_id = queued
    config = load_config(home, env={})
    _set(home, run_id, state="running", host=config.catalog.host, progress=json.dumps(PROGRESS))
    con = sqlite3.connect(home / "oneseek.db")
    con.execute(
        "INSERT INTO daemons (host, pid, version, started_at, heartbeat_at, activity) "
        "VALUES (?, ?, '0.1.0', '2026-12-01T22:00:00.000000Z', '2026-12-01T22:00:01.000000Z', ?)",
        (config.catalog.host, os.getpid(), f"training {run_id}: x epoch 1/2, step 1/6"),
    )
    con.commit()
    lock = HomeLock(config.home.lock_file)
    lock.acquire()
    try:
        code, out, _ = ctl_text(home, "status")
    finally:
        lock.release()
    assert code == 0
    # the heartbeat as an age (issue 30, item 11): days ago here, seconds ago on a live daemon
    assert out.splitlines()[0].startswith(
        f"oneseekd: running (pid {os.getpid()}), training {run_id}, last heartbeat "
    )
    assert out.splitlines()[0].endswith(" ago")
    assert out.count("step ") == 1
    assert "step 3/6" in out


def test_submit_with_nothing_names_the_file_and_the_flags(tmp_path: Path) -> None:
    home = training_home(tmp_path / "home")
    code, _, err = ctl_text(home, "submit")
    assert code == 1
    assert err.strip() == (
        "Error: nothing to submit\n"
        "  - give a request file: oneseekctl submit FILE.json\n"
        "  - or flags: oneseekctl submit --base-models A B --dataset FILE [--epochs N ...]"
    )
    assert not (home / "oneseek.db").exists()  # refused before anything was written


def test_submit_with_a_missing_field_names_the_flag(tmp_path: Path) -> None:
    home = training_home(tmp_path / "home")
    code, _, err = ctl_text(home, "submit", "--epochs", "1")
    assert code == 1
    assert err.strip() == (
        "Error: the request was refused\n"
        "  - base_models is required: name them with --base-models A B "
        "(or A,B; BASE_MODELS=a,b in the environment)\n"
        "  - dataset is required: name a file under HOME/datasets/ with --dataset FILE"
    )


def test_submit_help_shows_the_request_file(tmp_path: Path) -> None:
    code, out, _ = ctl_text(tmp_path, "submit", "--help")
    assert code == 0
    assert out.splitlines()[0] == "Usage: oneseekctl submit [OPTIONS] [FILE.json]"
