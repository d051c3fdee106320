"""The real daemon with the fake trainer: requests from every door, runs one at a time, and
nothing lost when the daemon is killed."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from daemon import DaemonProcess, query, ready_daemon, run_state, run_until_idle, wait_for
from homes import drop, fake_behaviour, fake_starts, request

from oneseekd.cli import main as ctl_main


@pytest.fixture
def daemon(fake_home: Path) -> Iterator[DaemonProcess]:
    with ready_daemon(fake_home) as proc:
        yield proc


INSERT = """
import sqlite3, sys, time
con = sqlite3.connect(sys.argv[1], timeout=30)
con.execute("PRAGMA busy_timeout = 30000")
cur = con.execute("INSERT INTO training_requests (payload) VALUES (?)", (sys.argv[2],))
con.commit()
print(cur.lastrowid, time.time())
"""


def insert_row(fake_home: Path, payload: str) -> tuple[int, float]:
    done = subprocess.run(
        [sys.executable, "-c", INSERT, str(fake_home / "oneseek.db"), payload],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    row_id, at = done.stdout.split()
    return int(row_id), float(at)


def test_a_row_from_another_process_is_queued_within_a_second(
    daemon: DaemonProcess, fake_home: Path
) -> None:
    row_id, inserted_at = insert_row(fake_home, json.dumps(request()))
    status = wait_for(
        lambda: (
            (
                query(fake_home, "SELECT status FROM training_requests WHERE id = ?", row_id)[0][0]
                != "pending"
            )
            and time.time()
        ),
        timeout=5,
    )
    assert status - inserted_at < 1.0
    [(verdict, run)] = query(
        fake_home, "SELECT status, run_id FROM training_requests WHERE id = ?", row_id
    )
    assert verdict == "queued" and run is not None


def test_a_bad_row_is_rejected_with_its_error(daemon: DaemonProcess, fake_home: Path) -> None:
    row_id, _ = insert_row(fake_home, json.dumps(request(base_models=["llama"], epochs="many")))
    wait_for(
        lambda: (
            query(fake_home, "SELECT status FROM training_requests WHERE id = ?", row_id)[0][0]
            != "pending"
        ),
        timeout=5,
    )
    [(status, error)] = query(
        fake_home, "SELECT status, error FROM training_requests WHERE id = ?", row_id
    )
    assert status == "rejected"
    assert error == "epochs: input should be a valid integer (got 'many')"


def test_a_slowly_written_file_is_read_once_and_whole(
    daemon: DaemonProcess, fake_home: Path
) -> None:
    body = json.dumps(request(epochs=2)).encode()
    tmp = fake_home / "requests" / "slow.json.tmp"
    with tmp.open("wb") as fh:
        for i in range(0, len(body), 7):
            fh.write(body[i : i + 7])
            fh.flush()
            time.sleep(0.02)
    os.rename(tmp, fake_home / "requests" / "slow.json")
    wait_for(lambda: (fake_home / "requests" / "accepted" / "slow.json").exists(), timeout=5)
    assert query(fake_home, "SELECT COUNT(*), MIN(source_name) FROM training_requests") == [
        (1, "slow.json")
    ]
    assert (fake_home / "requests" / "accepted" / "slow.json").read_bytes() == body


def test_sigkill_while_running_then_the_next_start_resumes_the_run(fake_home: Path) -> None:
    fake_behaviour(fake_home, "1.0", sleep=30)
    first = DaemonProcess(fake_home)
    first.wait_event("daemon_ready")
    drop(fake_home, "long.json", request(version="1.0"))
    started = first.wait_event("run_started")
    run_id = started["run_id"]
    wait_for(lambda: (fake_home / "fake" / f"started-{run_id}").exists())
    first.kill()  # SIGKILL: no chance to clean up
    assert run_state(fake_home, run_id) == "running"
    # the orphaned trainer notices its supervisor is gone and stops
    wait_for(lambda: len(fake_starts(fake_home)) == 1, timeout=10)
    fake_behaviour(fake_home, "1.0", sleep=0.05)
    second = DaemonProcess(fake_home)
    try:
        second.wait_event("run_resumed")
        wait_for(lambda: run_state(fake_home, run_id) == "succeeded", timeout=10)
    finally:
        second.kill()
    assert [(s["run_id"], s["attempt"], s["resume"]) for s in fake_starts(fake_home)] == [
        (run_id, "1", "0"),
        (run_id, "2", "1"),
    ]
    history = [
        r[0]
        for r in query(
            fake_home,
            "SELECT e.detail FROM run_events e JOIN runs r "
            "ON r.id = e.run_id WHERE r.run_id = ? ORDER BY e.id",
            run_id,
        )
    ]
    assert history[2] == "resumed after the daemon restarted (attempt 2)"


def test_sigterm_while_running_checkpoints_and_the_next_start_resumes(fake_home: Path) -> None:
    fake_behaviour(fake_home, "1.0", sleep=30)
    first = DaemonProcess(fake_home)
    first.wait_event("daemon_ready")
    drop(fake_home, "long.json", request(version="1.0"))
    run_id = first.wait_event("run_started")["run_id"]
    wait_for(lambda: (fake_home / "fake" / f"started-{run_id}").exists())
    assert first.stop(signal.SIGTERM, timeout=20) == 0
    assert (fake_home / "fake" / f"checkpoint-{run_id}").exists()
    assert run_state(fake_home, run_id) == "running"
    fake_behaviour(fake_home, "1.0", sleep=0.05)
    done = run_until_idle(fake_home, timeout=60)
    assert done.returncode == 0, done.stderr
    assert run_state(fake_home, run_id) == "succeeded"


def test_cancel_from_the_command_line_while_running(daemon: DaemonProcess, fake_home: Path) -> None:
    fake_behaviour(fake_home, "1.0", sleep=30)
    drop(fake_home, "long.json", request(version="1.0"))
    run_id = daemon.wait_event("run_started")["run_id"]
    wait_for(lambda: (fake_home / "fake" / f"started-{run_id}").exists())
    result = CliRunner().invoke(ctl_main, ["--home", str(fake_home), "cancel", run_id])
    assert result.exit_code == 0
    assert result.stdout.startswith(f"Asked run {run_id} to stop at its next step")
    wait_for(lambda: run_state(fake_home, run_id) == "cancelled", timeout=10)


def test_exit_when_idle_waits_for_every_request_and_run(fake_home: Path) -> None:
    (fake_home / "requests").mkdir()
    subprocess.run(
        [sys.executable, "-m", "oneseekd.cli", "--home", str(fake_home), "db", "upgrade"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    for i in range(3):
        fake_behaviour(fake_home, f"1.{i}", sleep=0.2)
        drop(fake_home, f"r{i}.json", request(version=f"1.{i}"))
    drop(fake_home, "bad.json", {"dataset": "civic.jsonl"})
    fake_behaviour(fake_home, "2.0", sleep=0.2)
    insert_row(fake_home, json.dumps(request(version="2.0")))
    done = run_until_idle(fake_home, timeout=60)
    assert done.returncode == 0, done.stderr
    assert query(fake_home, "SELECT state, COUNT(*) FROM runs GROUP BY state") == [("succeeded", 4)]
    starts = fake_starts(fake_home)
    assert len(starts) == 4
    ordered = sorted(starts, key=lambda s: float(s["start"]))  # type: ignore[arg-type]
    for earlier, later in itertools.pairwise(ordered):
        assert float(later["start"]) >= float(earlier["end"])  # type: ignore[arg-type]
    assert sorted(os.listdir(fake_home / "requests" / "rejected")) == ["bad.error.json", "bad.json"]
