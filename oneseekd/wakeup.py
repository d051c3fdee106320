"""Wake a sleeping loop from another thread or from a signal handler.

`threading.Event` cannot be set from a signal handler: Python runs the handler in the main
thread between two bytecodes, and when the main thread is itself inside `Event.wait` (on its
way into or out of the condition it holds), `set()` waits for the lock that same thread holds,
for ever. The daemon's loop sleeps in `Event.wait` most of its life, so a SIGTERM arriving at
that instant hung it (seen under load: a daemon that ignored SIGTERM until SIGKILL).

A byte written down a pipe takes no lock: `Wakeup.set()` is safe from any thread and from a
signal handler, and `wait()` sleeps in poll() on the pipe's other end, which the byte (or a
signal's handler writing one) ends at once.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
from typing import Protocol


class Waker(Protocol):
    """What a part that wakes the loop is given: a `threading.Event` or a `Wakeup`."""

    def set(self) -> None: ...


class Wakeup:
    def __init__(self) -> None:
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._poll = select.poll()
        self._poll.register(self._read, select.POLLIN)

    def set(self) -> None:
        """Wake the waiter now, or at its next wait if none is waiting; nothing once closed
        (the descriptor's number may be another file's by then)."""
        if self._write < 0:
            return
        with contextlib.suppress(BlockingIOError):  # the pipe is full: a wake is pending
            os.write(self._write, b"\0")

    def is_set(self) -> bool:
        return bool(self._poll.poll(0))

    def wait(self, timeout: float) -> bool:
        """Sleep until woken or `timeout` seconds pass; True when woken. The wake is spent:
        the next wait sleeps again (every wake before this returns is spent with it)."""
        woken = bool(self._poll.poll(max(math.ceil(timeout * 1000), 0)))
        self.clear()
        return woken

    def clear(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._read, 4096):
                pass

    def close(self) -> None:
        if self._write >= 0:
            write, self._write = self._write, -1
            os.close(write)
            os.close(self._read)
