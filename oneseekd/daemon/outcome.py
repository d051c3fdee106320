"""How a trainer's exit becomes a run's stored outcome, from plain values: the exit status
(negative: the signal that killed it), whether a cancel was asked for, and its log's tail."""

from __future__ import annotations

import signal
from pathlib import Path

from oneseekd import attempts, protocol
from oneseekd.logs import render_log_line
from oneseekd.queue.states import Ending

TAIL_BYTES = 8192
TAIL_LINES = 40


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


def of_exit(code: int, *, cancelled: bool, tail: str) -> Ending:
    """The outcome of a trainer that ended on its own or was stopped by a cancel."""
    if cancelled:
        return Ending("cancelled", "cancelled", exit_code=code)
    if code == protocol.EXIT_OK:
        return Ending("succeeded", "succeeded", exit_code=code)
    if code == protocol.EXIT_OOM or any(m in tail for m in protocol.OOM_MARKERS):
        error = (
            "out of memory: lower batch_size or max_seq_len, or set "
            "gradient_checkpointing: true\n" + tail
        )
        return Ending("failed", "oom", error, code)
    if code < 0:
        hint = (
            " (the kernel's out-of-memory killer sends SIGKILL: see dmesg)"
            if -code == signal.SIGKILL
            else ""
        )
        error = f"the trainer was killed by {signal_name(-code)}{hint}\n{tail}"
        return Ending("failed", "signal", error, code)
    if code == protocol.EXIT_STOPPED:
        error = f"the trainer stopped without being asked to (exit {code})\n{tail}"
        return Ending("failed", "stopped", error, code)
    return Ending("failed", "error", f"the trainer exited with status {code}\n{tail}", code)


def of_shutdown(code: int, *, killed: bool) -> tuple[bool, str]:
    """A trainer the daemon stopped on its way down: whether the stop went as planned (a
    checkpointed exit, not a failed attempt for max_attempts) and how the attempt ended."""
    planned = code == protocol.EXIT_STOPPED and not killed
    detail = (
        attempts.stopped_detail("shutdown") if planned else attempts.failed_detail(code, "shutdown")
    )
    return planned, detail
