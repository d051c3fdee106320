"""The real daemon in a child process, on real folders: the catalog follows the disk live."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon import DaemonProcess, model_state, ready_daemon, run_until_idle, wait_for
from modelfactory import TINY_TENSORS, make_model, safetensors_bytes, write_config

SETTLE = 0.4


@pytest.fixture
def live_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    # a long rescan interval: what these tests see must come from watch events
    (home / "oneseekd.toml").write_text(
        f"[catalog]\nsettle_seconds = {SETTLE}\nrescan_interval_seconds = 3600\n"
    )
    return home


@pytest.fixture
def daemon(live_home: Path) -> Iterator[DaemonProcess]:
    with ready_daemon(live_home) as proc:
        yield proc


def ready_transitions(home: Path, key: str) -> int:
    con = sqlite3.connect(home / "oneseek.db")
    (count,) = con.execute(
        "SELECT COUNT(*) FROM catalog_events e JOIN base_models m ON m.id = e.model_id "
        "WHERE m.key = ? AND e.new_state = 'ready' AND e.old_state IS NOT 'ready'",
        (key,),
    ).fetchone()
    return int(count)


def test_model_copied_in_while_running_becomes_ready_once_without_restart(
    daemon: DaemonProcess, live_home: Path
) -> None:
    folder = live_home / "models" / "oneseek-7b-zero" / "base_models" / "Qwen-2.5-7B"
    folder.mkdir()
    write_config(folder, model_type="qwen2")
    data = safetensors_bytes(TINY_TENSORS)
    chunk = len(data) // 6
    with (folder / "model.safetensors").open("wb") as fh:
        # a slow copy: pauses shorter than the settle time, spread over ~3 settle times
        for start in range(0, len(data), chunk):
            fh.write(data[start : start + chunk])
            fh.flush()
            time.sleep(SETTLE / 2)
            assert model_state(live_home, "qwen-2-5-7b") != "ready"
    wait_for(
        lambda: model_state(live_home, "qwen-2-5-7b") == "ready",
        timeout=SETTLE + 5,
        what="qwen-2-5-7b ready",
    )
    assert ready_transitions(live_home, "qwen-2-5-7b") == 1


def test_half_copied_model_is_never_ready(daemon: DaemonProcess, live_home: Path) -> None:
    folder = live_home / "models" / "Mistral-7B-Instruct"
    folder.mkdir()
    write_config(folder, model_type="mistral")
    data = safetensors_bytes(TINY_TENSORS)
    (folder / "model.safetensors").write_bytes(data[: len(data) // 3])
    wait_for(
        lambda: model_state(live_home, "mistral-7b-instruct") == "incomplete",
        timeout=SETTLE + 5,
        what="incomplete row",
    )
    time.sleep(SETTLE * 3)  # well past the settle time: still not ready
    assert model_state(live_home, "mistral-7b-instruct") == "incomplete"


def test_removed_model_becomes_missing_and_malformed_one_invalid(
    daemon: DaemonProcess, live_home: Path
) -> None:
    base = live_home / "models" / "oneseek-7b-zero" / "base_models"
    gone = make_model(base, "llama-2-7b")
    bad = make_model(base, "gemma_2_9b")
    wait_for(lambda: model_state(live_home, "llama-2-7b") == "ready", timeout=SETTLE + 5)
    wait_for(lambda: model_state(live_home, "gemma-2-9b") == "ready", timeout=SETTLE + 5)
    shutil.rmtree(gone)
    (bad / "config.json").write_text("{not json")
    wait_for(lambda: model_state(live_home, "llama-2-7b") == "missing", timeout=SETTLE + 5)
    wait_for(lambda: model_state(live_home, "gemma-2-9b") == "invalid", timeout=SETTLE + 5)
    con = sqlite3.connect(live_home / "oneseek.db")
    (reason,) = con.execute(
        "SELECT state_reason FROM base_models WHERE key = 'gemma-2-9b'"
    ).fetchone()
    assert reason.startswith("config.json is not valid JSON")


def test_moving_a_finished_copy_in_is_seen_after_the_settle_time(
    daemon: DaemonProcess, live_home: Path, tmp_path: Path
) -> None:
    staged = make_model(tmp_path / "staging", "KB-Llama-3.1-8B-Swedish")
    target = live_home / "models" / "oneseek-7b-zero" / "base_models" / staged.name
    os.rename(staged, target)
    moved_at = time.monotonic()
    wait_for(
        lambda: model_state(live_home, "kb-llama-3-1-8b-swedish") == "ready", timeout=SETTLE + 5
    )
    # within the settle time plus a generous margin for a loaded CI machine
    assert time.monotonic() - moved_at < SETTLE + 3


def test_sigterm_stops_cleanly(daemon: DaemonProcess) -> None:
    assert daemon.stop(signal.SIGTERM) == 0
    events = [e["event"] for e in daemon.events()]
    assert events[-1] == "daemon_stopped"
    assert daemon.events()[-1]["reason"] == "SIGTERM"


def test_sigint_stops_cleanly(daemon: DaemonProcess) -> None:
    assert daemon.stop(signal.SIGINT) == 0
    assert daemon.events()[-1]["event"] == "daemon_stopped"


def refused_start(home: Path) -> subprocess.CompletedProcess[str]:
    """`python -m oneseekd --home HOME` where it must not start: its exit status and output."""
    return subprocess.run(
        [sys.executable, "-m", "oneseekd", "--home", str(home)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_a_second_daemon_on_the_same_home_is_refused(
    daemon: DaemonProcess, live_home: Path
) -> None:
    second = refused_start(live_home)
    assert second.returncode == 4
    assert (
        f"Error: another oneseekd (pid {daemon.proc.pid}) already runs on {live_home}"
        in second.stderr
    )
    assert daemon.proc.poll() is None


def test_exit_when_idle_exits_once_the_catalog_is_current(live_home: Path) -> None:
    make_model(live_home / "models", "llama-2-7b")
    done = run_until_idle(live_home, timeout=60)
    assert done.returncode == 0, done.stderr
    # the folder was fresh, so the daemon waited for it to settle before calling it current
    assert model_state(live_home, "llama-2-7b") == "ready"
    assert '"event": "daemon_stopped"' in done.stderr


def test_a_bad_config_stops_the_daemon_with_every_problem(live_home: Path) -> None:
    (live_home / "oneseekd.toml").write_text('log_level = "loud"\n[catalog]\nsettle = 1\n')
    done = refused_start(live_home)
    assert done.returncode == 78  # configuration (oneseekd/errors.py)
    assert "Error: the configuration in" in done.stderr
    assert "log_level must be one of debug, info, warning, error, got 'loud'" in done.stderr
    assert "[catalog]: unknown setting 'settle'" in done.stderr
