"""The log is JSON lines that several processes append to at once (torchrun's ranks share the
run log), so each line must reach the file in one write."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import structlog

from oneseekd.logs import configure_logging


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
