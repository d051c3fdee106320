"""The daemon loop's wake-up: settable from threads and from signal handlers, never a hang.

A `threading.Event` set from a signal handler while the main thread is inside `Event.wait`
waits for a lock the same thread holds: a daemon hung that way ignored SIGTERM
(tests/test_systemd.py caught it once, under load)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from oneseekd.wakeup import Wakeup

STORM = """
import signal, sys, threading, time
from oneseekd.wakeup import Wakeup
wake = Wakeup() if sys.argv[1] == "wakeup" else threading.Event()
woken = 0
signal.signal(signal.SIGALRM, lambda *_: wake.set())
signal.setitimer(signal.ITIMER_REAL, 0.0005, 0.0005)
deadline = time.monotonic() + float(sys.argv[2])
waits = 0
while time.monotonic() < deadline:
    woken += bool(wake.wait(0.01))
    if not isinstance(wake, Wakeup):
        wake.clear()
    waits += 1
signal.setitimer(signal.ITIMER_REAL, 0)
print(waits, woken)
"""


def storm(tmp_path: Path, kind: str, seconds: float) -> subprocess.CompletedProcess[str]:
    """A signal every 0.5 ms whose handler sets the wake-up the main thread keeps waiting on."""
    script = tmp_path / "storm.py"
    script.write_text(STORM)
    return subprocess.run(
        [sys.executable, str(script), kind, str(seconds)],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=False,
    )


def test_a_signal_storm_on_a_waiting_loop_never_hangs_it(tmp_path: Path) -> None:
    done = storm(tmp_path, "wakeup", 3.0)
    assert done.returncode == 0, done.stderr[-2000:]
    waits, woken = map(int, done.stdout.split())
    assert waits > 100
    assert woken >= waits * 0.9  # each wait ended by a signal's wake, not its 10 ms timeout


@pytest.mark.slow
def test_the_same_storm_breaks_a_threading_event(tmp_path: Path) -> None:
    """What the test above guards against, shown: within a minute of this storm the Event's
    handler hangs on the lock (a timeout here) or recurses until the process dies."""
    for _ in range(6):
        try:
            done = storm(tmp_path, "event", 10.0)
        except subprocess.TimeoutExpired:
            return
        if done.returncode != 0:
            return
    pytest.fail("a threading.Event survived a minute of signals (this machine's luck)")


def test_a_wake_before_the_wait_ends_it_at_once_and_is_spent_by_it() -> None:
    wake = Wakeup()
    try:
        assert not wake.is_set()
        wake.set()
        wake.set()  # two wakes before a wait are one
        assert wake.is_set()
        started = time.monotonic()
        assert wake.wait(30)
        assert time.monotonic() - started < 5
        assert not wake.is_set()
        started = time.monotonic()
        assert not wake.wait(0.05)  # spent: this one sleeps its timeout
        assert time.monotonic() - started >= 0.04
    finally:
        wake.close()


def test_a_thread_wakes_the_waiter_and_a_closed_wakeup_ignores_set() -> None:
    wake = Wakeup()
    timer = threading.Timer(0.1, wake.set)
    timer.start()
    try:
        assert wake.wait(30)
    finally:
        timer.join()
        wake.close()
    wake.set()  # a late signal after the daemon ended: nothing written anywhere
    wake.close()
