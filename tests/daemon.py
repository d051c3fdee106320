"""Running the real daemon in a child process, and polling with deadlines (never bare sleeps)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str = "condition",
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class DaemonProcess:
    def __init__(
        self,
        home: Path,
        *args: str,
        env: dict[str, str] | None = None,
        command: list[str] | None = None,  # instead of `python -m oneseekd` (crashharness)
    ) -> None:
        self.home = home
        self.log_path = home / "daemon-test.log"
        home.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("w")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        env.pop("ONESEEK_HOME", None)
        env.pop("ONESEEK_DB_URL", None)
        self.proc = subprocess.Popen(
            [*(command or [sys.executable, "-m", "oneseekd"]), "--home", str(home), *args],
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            env=env,
        )

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                out.append({"event": "unparsed", "line": line})
        return out

    def wait_event(self, name: str, timeout: float = 15.0) -> dict[str, Any]:
        def seen() -> dict[str, Any] | None:
            if self.proc.poll() is not None and not any(
                e.get("event") == name for e in self.events()
            ):
                raise AssertionError(
                    f"daemon exited {self.proc.returncode}: {self.log_path.read_text()}"
                )
            return next((e for e in self.events() if e.get("event") == name), None)

        return wait_for(seen, timeout, what=f"log event {name}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Signal the daemon and wait for its exit status. One that outlives `timeout` is
        killed (never left running after the test) and the test fails on the timeout."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def cmdlines() -> dict[int, bytes]:
    """Every process's command line (NUL-separated) from /proc; a zombie's is empty."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):  # it ended while we looked
                found[int(entry.name)] = (entry / "cmdline").read_bytes()
    return found


def model_state(home: Path, key: str) -> str | None:
    db = home / "oneseek.db"
    if not db.exists():
        return None
    con = sqlite3.connect(db, timeout=10)
    try:
        row = con.execute("SELECT state FROM base_models WHERE key = ?", (key,)).fetchone()
    except sqlite3.OperationalError:
        return None
    finally:
        con.close()
    return None if row is None else str(row[0])


def run_until_idle(home: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`oneseekd --home HOME --exit-when-idle`, with no ONESEEK_* from the test's environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONESEEK_")}
    return subprocess.run(
        [sys.executable, "-m", "oneseekd", "--home", str(home), "--exit-when-idle"],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def query(home: Path, sql: str, *args: object) -> list[tuple[Any, ...]]:
    """Read the home's database from a plain sqlite3 connection, as another program would."""
    con = sqlite3.connect(home / "oneseek.db", timeout=30)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def run_state(home: Path, run_id: str) -> str | None:
    rows = query(home, "SELECT state FROM runs WHERE run_id = ?", run_id)
    return str(rows[0][0]) if rows else None


@contextmanager
def ready_daemon(home: Path) -> Iterator[DaemonProcess]:
    """A daemon on `home` that has logged daemon_ready; killed on the way out."""
    proc = DaemonProcess(home)
    try:
        proc.wait_event("daemon_ready")
        yield proc
    finally:
        proc.kill()
