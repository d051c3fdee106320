"""How a trainer's exit becomes a run's stored outcome, from plain values: the exit status
(negative: the signal that killed it), whether a cancel was asked for, and its log's tail."""

from __future__ import annotations

import signal
from pathlib import Path

from oneseekd import attempts, logs, protocol
from oneseekd.logs import grouped_lines, is_noise, render_log_line
from oneseekd.queue.states import Ending

TAIL_BYTES = 65536  # enough for a refusal that lists its 20 problems on one JSON line
TAIL_LINES = 40


def _last_lines(path: Path) -> list[str]:
    try:
        with path.open("rb") as fh:
            start = max(path.stat().st_size - TAIL_BYTES, 0)
            fh.seek(start)
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return []
    lines = text.splitlines()
    return lines[1:] if start > 0 else lines  # the first is cut: it began before the window


def log_tail(path: Path) -> str:
    """The end of a run's log as an operator reads it: each JSON line as text, library noise
    (Python warnings, library log lines, the trainer's argv) left out, and the same problem at
    consecutive lines or records grouped (`lines 1-20: ...`)."""
    kept = [line for line in _last_lines(path) if not is_noise(line)][-TAIL_LINES:]
    # the log is JSON lines: the error an operator reads shows them as text
    rendered = "\n".join(render_log_line(line) for line in kept)
    return "\n".join(grouped_lines(rendered.splitlines()))


def log_reason(path: Path) -> str | None:
    """The trainer's own reason for ending, as it wrote it in its log (logs.log_reason)."""
    return logs.log_reason(_last_lines(path))


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def of_exit(code: int, *, cancelled: bool, tail: str, reason: str | None = None) -> Ending:
    """The outcome of a trainer that ended on its own or was stopped by a cancel. The error's
    first line is the cause: the trainer's own `reason` where its log gives one (a refused
    dataset: which records and why), else what the exit says; the log's end follows."""
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
    said = f"the trainer exited with status {code}"
    if reason:
        return Ending("failed", "error", f"{reason}\n({said}; the end of its log:)\n{tail}", code)
    return Ending("failed", "error", f"{said}\n{tail}", code)


def of_shutdown(code: int, *, killed: bool) -> tuple[bool, str]:
    """A trainer the daemon stopped on its way down: whether the stop went as planned (a
    checkpointed exit, not a failed attempt for max_attempts) and how the attempt ended."""
    planned = code == protocol.EXIT_STOPPED and not killed
    detail = (
        attempts.stopped_detail("shutdown") if planned else attempts.failed_detail(code, "shutdown")
    )
    return planned, detail
