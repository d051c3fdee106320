"""The child process that encodes a dry run's records (oneseekd.trainer.dryrun), started as
the very first thing `oneseekctl submit --dry-run` (or `train --dry-run`) does: its imports
then overlap the CLI's own (SQLAlchemy, the intake, the queue), the request's checks and the
catalog scan, and the whole dry run answers in about the time of the child alone.

Nothing here imports more than the standard library. A child never asked for its task (the
request was refused first) is killed when the command ends.
"""

from __future__ import annotations

import atexit
import subprocess
import sys

_started: list[subprocess.Popen[str]] = []


def start() -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-m", "oneseekd.trainer.dryrun"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _started.append(child)
    return child


def start_early(argv: list[str]) -> None:
    """Start the child now when `argv` (oneseekctl's arguments) asks for a dry run."""
    if "--dry-run" in argv and any(name in argv for name in ("submit", "train")):
        start()


def take() -> subprocess.Popen[str]:
    """The child started early, else a new one."""
    return _started.pop() if _started else start()


def release(child: subprocess.Popen[str]) -> None:
    """Kill `child` unless it has ended (it was never given its task)."""
    if child.poll() is None:
        child.kill()
        child.communicate()


@atexit.register
def _unused() -> None:
    while _started:
        release(_started.pop())
