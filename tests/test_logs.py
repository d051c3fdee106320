"""The log is JSON lines that several processes append to at once (torchrun's ranks share the
run log), so each line must reach the file in one write."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import structlog

from oneseekd.logs import configure_logging, human_wanted


class Writes(io.StringIO):
    """A stream that keeps each write() call apart."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def write(self, text: str) -> int:
        self.calls.append(text)
        return super().write(text)


def test_each_event_is_one_write_of_one_whole_line() -> None:
    stream = Writes()
    before = structlog.get_config()
    configure_logging("info", stream)
    try:
        structlog.get_logger("t").info("epoch_finished", model="tiny-llama", epoch=1)
        structlog.get_logger("t").info("model_trained", model="tiny-llama")
    finally:
        structlog.configure(**before)
    assert len(stream.calls) == 2
    for call in stream.calls:
        assert call.endswith("\n") and call.count("\n") == 1
        json.loads(call)
    assert [json.loads(c)["event"] for c in stream.calls] == ["epoch_finished", "model_trained"]


WRITER = """
import sys
from oneseekd.logs import configure_logging
import structlog
configure_logging("info")
log = structlog.get_logger("t")
for i in range(int(sys.argv[1])):
    log.info("epoch_finished", writer=sys.argv[2], i=i, pad="x" * 150)
"""


def test_processes_sharing_one_log_descriptor_leave_whole_lines(tmp_path: Path) -> None:
    lines = 3000
    log_path = tmp_path / "run.log"
    with log_path.open("ab") as log_file:  # as the supervisor opens a run's log
        writers = [
            subprocess.Popen(
                [sys.executable, "-c", WRITER, str(lines), name],
                stdout=subprocess.DEVNULL,
                stderr=log_file,
            )
            for name in ("rank0", "rank1")
        ]
        assert [w.wait(timeout=60) for w in writers] == [0, 0]
    events = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert len(events) == 2 * lines
    for name in ("rank0", "rank1"):
        assert [e["i"] for e in events if e["writer"] == name] == list(range(lines))


class Terminal(io.StringIO):
    """A stream that says it is a terminal, as a person's stderr does."""

    def isatty(self) -> bool:
        return True


def test_one_switch_picks_human_lines_for_a_terminal_and_json_for_the_rest() -> None:
    assert human_wanted(Terminal(), {}) is True
    assert human_wanted(io.StringIO(), {}) is False  # piped, or a file
    assert human_wanted(Terminal(), {"JOURNAL_STREAM": "8:12345"}) is False  # under systemd
    assert human_wanted(Terminal(), {"ONESEEK_LOG_FORMAT": "json"}) is False
    assert human_wanted(io.StringIO(), {"ONESEEK_LOG_FORMAT": "human"}) is True


def test_a_terminal_gets_readable_lines_and_a_pipe_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    monkeypatch.delenv("ONESEEK_LOG_FORMAT", raising=False)
    before = structlog.get_config()
    terminal, pipe = Terminal(), io.StringIO()
    try:
        configure_logging("info", terminal)
        structlog.get_logger("t").info("run_started", run_id="run-1", attempt=1)
        configure_logging("info", pipe)
        structlog.get_logger("t").info("run_started", run_id="run-1", attempt=1)
    finally:
        structlog.configure(**before)
    line = re.sub(r"\x1b\[[0-9;]*m", "", terminal.getvalue())  # its colours
    assert not line.startswith("{") and "run_started" in line and "run-1" in line
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", line)  # the one human time format
    assert json.loads(pipe.getvalue())["event"] == "run_started"
