"""One daemon per home: an exclusive flock on HOME/oneseekd.lock, held for the daemon's life.

The kernel drops the lock when the process dies, however it dies, so a stale lock file never
blocks a restart.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from oneseekd.errors import DaemonAlreadyRunning


@dataclass(frozen=True)
class LockState:
    held: bool
    pid: int | None


class HomeLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: IO[str] | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = self.path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            state = probe(self.path)
            raise DaemonAlreadyRunning(
                f"another oneseekd (pid {state.pid or 'unknown'}) already runs on "
                f"{self.path.parent}",
                [
                    "stop it first (systemctl stop oneseekd, or kill that pid), "
                    "or give this one another --home"
                ],
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


def probe(path: Path) -> LockState:
    """Whether a live daemon holds the lock, and its pid; never takes the lock for long."""
    try:
        fh = path.open("r", encoding="utf-8")
    except FileNotFoundError:
        return LockState(False, None)
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = fh.read().strip()
            return LockState(True, int(text) if text.isdigit() else None)
        fcntl.flock(fh, fcntl.LOCK_UN)
        return LockState(False, None)
