"""How a trainer's exit becomes a run's stored outcome, from plain values: the exit status
(negative: the signal that killed it), whether a cancel was asked for, and its log's tail."""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path

from oneseekd import attempts, protocol
from oneseekd.logs import render_log_line

TAIL_BYTES = 8192
TAIL_LINES = 40


@dataclass(frozen=True)
class Outcome:
    state: str  # succeeded | failed | cancelled
    outcome: str  # what `runs` shows: succeeded, oom, signal, stopped, error, cancelled
    error: str | None = None

    @property
    def event(self) -> str:
        """The log event that reports it."""
        return {"succeeded": "run_succeeded", "cancelled": "run_cancelled"}.get(
            self.state, "run_failed"
        )


def log_tail(path: Path) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(max(path.stat().st_size - TAIL_BYTES, 0))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    # the log is JSON lines: the error an operator reads shows them as text
    return "\n".join(render_log_line(line) for line in text.splitlines()[-TAIL_LINES:])


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def of_exit(code: int, *, cancelled: bool, tail: str) -> Outcome:
    """The outcome of a trainer that ended on its own or was stopped by a cancel."""
    if cancelled:
        return Outcome("cancelled", "cancelled")
    if code == protocol.EXIT_OK:
        return Outcome("succeeded", "succeeded")
    if code == protocol.EXIT_OOM or any(m in tail for m in protocol.OOM_MARKERS):
        return Outcome(
            "failed",
            "oom",
            "out of memory: lower batch_size or max_seq_len, or set "
            "gradient_checkpointing: true\n" + tail,
        )
    if code < 0:
        hint = (
            " (the kernel's out-of-memory killer sends SIGKILL: see dmesg)"
            if -code == signal.SIGKILL
            else ""
        )
        return Outcome(
            "failed", "signal", f"the trainer was killed by {signal_name(-code)}{hint}\n{tail}"
        )
    if code == protocol.EXIT_STOPPED:
        return Outcome(
            "failed", "stopped", f"the trainer stopped without being asked to (exit {code})\n{tail}"
        )
    return Outcome("failed", "error", f"the trainer exited with status {code}\n{tail}")


def of_shutdown(code: int, *, killed: bool) -> tuple[bool, str]:
    """A trainer the daemon stopped on its way down: whether the stop went as planned (a
    checkpointed exit, not a failed attempt for max_attempts) and how the attempt ended."""
    planned = code == protocol.EXIT_STOPPED and not killed
    detail = (
        attempts.stopped_detail("shutdown") if planned else attempts.failed_detail(code, "shutdown")
    )
    return planned, detail
