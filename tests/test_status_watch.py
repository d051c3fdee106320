"""`oneseekctl status` as a person and a program read it (issue 30, items 2 and 11): times in
the one human format with the heartbeat as an age, a failed run's cause on its recent line,
and `--watch` that never busy-loops, keeps piped refreshes apart and is NDJSON with --json."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from homes import ctl_text, drop, home_with_a_queued_run, open_home, request, training_home

from oneseekd.cli import status as status_module
from oneseekd.intake.accept import Intake
from oneseekd.intake.dropfolder import DropFolder


@pytest.fixture
def failed(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A home whose one run failed with a cause line and a log excerpt after it."""
    home, run_id = home_with_a_queued_run(tmp_path / "home")
    con = sqlite3.connect(home / "oneseek.db")
    con.execute(
        "UPDATE runs SET state = 'failed', outcome = 'error', finished_at = ?, error = ? "
        "WHERE run_id = ?",
        (
            "2026-12-01T22:00:00.123456Z",
            "dataset civic.jsonl has 20 record(s) x: lines 1\u201320: cut at max_seq_len 16\n"
            "(the trainer exited with status 65; the end of its log:)\nerror: trainer_refused",
            run_id,
        ),
    )
    con.commit()
    con.close()
    yield home, run_id


def test_the_recent_line_has_the_human_time_and_the_cause(failed: tuple[Path, str]) -> None:
    home, run_id = failed
    code, out, _ = ctl_text(home, "status")
    assert code == 0
    [recent] = [line for line in out.splitlines() if line.startswith("recent:")]
    assert recent.startswith(f"recent:   {run_id} failed v")
    assert recent.endswith(
        "2026-12-01 22:00:00 \u2014 dataset civic.jsonl has 20 record(s) x: lines 1\u201320: "
        "cut at max_seq_len 16"
    )
    code, out, _ = ctl_text(home, "status", "--json")
    [run] = json.loads(out)["recent_runs"]
    assert run["reason"].startswith("dataset civic.jsonl has 20 record(s)")
    assert run["finished_at"] == "2026-12-01T22:00:00.123456Z"  # JSON keeps the one format


def test_watch_zero_is_refused_not_a_busy_loop(failed: tuple[Path, str]) -> None:
    home, _ = failed
    code, _, err = ctl_text(home, "status", "--watch", "0")
    assert code == 2
    assert "--watch" in err and "0.5" in err


def _refreshes(monkeypatch: pytest.MonkeyPatch, count: int) -> list[float]:
    """time.sleep as --watch calls it, ending the loop (Ctrl-C) after `count` refreshes."""
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) >= count:
            raise KeyboardInterrupt

    monkeypatch.setattr(status_module.time, "sleep", sleep)
    return slept


def test_piped_watch_puts_a_time_line_between_refreshes(
    failed: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    home, _ = failed
    slept = _refreshes(monkeypatch, 2)
    code, out, _ = ctl_text(home, "status", "--watch", "1")
    assert code == 0 and slept == [1.0, 1.0]
    lines = out.splitlines()
    separators = [line for line in lines if line.startswith("--- ")]
    assert len(separators) == 2 and lines[0] == separators[0]
    assert "\x1b" not in out  # no screen clearing into a pipe
    assert sum(line.startswith("oneseekd: ") for line in lines) == 2


def test_watch_json_is_one_compact_object_a_line(
    failed: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    home, run_id = failed
    _refreshes(monkeypatch, 3)
    code, out, _ = ctl_text(home, "status", "--watch", "--json")
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 3
    for line in lines:
        assert json.loads(line)["recent_runs"][0]["run_id"] == run_id


def test_status_names_the_newest_refusal(tmp_path: Path) -> None:
    """Item 5 of issue 30, on status's screen: a refused file is seen without opening
    requests/rejected/ (the line is cli/requests.py's refusal_line)."""
    root = training_home(tmp_path / "home")
    config, engine = open_home(root)
    try:
        drop(root, "typo.json", json.dumps(request(epoch=2)))
        DropFolder(Intake(engine, config.home), config.home, settle=0).poll()
    finally:
        engine.dispose()
    code, out, _ = ctl_text(root, "status")
    assert code == 0
    [line] = [line for line in out.splitlines() if line.startswith("rejected: ")]
    assert line.startswith("rejected: typo.json ")
    assert "unknown field 'epoch'" in line
    data = json.loads(ctl_text(root, "status", "--json")[1])
    assert data["last_refusal"]["name"] == "typo.json"
