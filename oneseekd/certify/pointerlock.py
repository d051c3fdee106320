"""The lock that serializes CURRENT moves in a home (certify/current.py).

An exclusive flock on `oneseek-certified/.OneSeek-7B-Zero-CURRENT.lock`, held by whoever writes
an intent note from the note until its transaction has ended, and by whoever settles a note for
the whole settle. So a note is only ever judged by a process that knows its writer's
transaction is over: committed (its event is visible: finish the move) or not (its writer
rolled back or died: drop it). The kernel drops the lock when its process dies, however it
dies, so a crash never leaves a home locked.

Re-entrant within a process: the transaction that noted a move may settle it (or an older
one) while it holds the lock. Threads of one process take turns like processes do.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from oneseekd.certify.layout import POINTER_LOCK
from oneseekd.home import HomePaths

_mutex = threading.RLock()  # held while this process holds a flock: other threads wait on it
_held: dict[str, list[int]] = {}  # lock path -> [descriptor, depth]


def lock_path(paths: HomePaths) -> Path:
    return paths.certified / POINTER_LOCK


def acquire(paths: HomePaths) -> None:
    """Wait for the home's pointer lock (or take it again: re-entrant)."""
    path = lock_path(paths)
    key = str(path.absolute())
    _mutex.acquire()
    try:
        entry = _held.get(key)
        if entry is not None:
            entry[1] += 1
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        _held[key] = [fd, 1]
    except BaseException:
        _mutex.release()
        raise


def release(paths: HomePaths) -> None:
    """Give back one hold of the lock; the flock goes with the last."""
    key = str(lock_path(paths).absolute())
    entry = _held.get(key)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] == 0:
        del _held[key]
        try:
            fcntl.flock(entry[0], fcntl.LOCK_UN)
        finally:
            os.close(entry[0])
    _mutex.release()


def holds(paths: HomePaths) -> bool:
    """Whether this process holds the lock now."""
    return str(lock_path(paths).absolute()) in _held


@contextmanager
def held(paths: HomePaths) -> Iterator[None]:
    acquire(paths)
    try:
        yield
    finally:
        release(paths)
