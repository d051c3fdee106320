"""Process trees and signals, read from /proc: a trainer, torchrun's workers, and theirs.

A multi-process trainer is torchrun's agent with one worker per rank, each in a session of its
own; a kill reaches them one by one, found as the agent's descendants, and a worker that
outlived its agent is still found by the pid it wrote to the run's exit folder.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from oneseekd import protocol


def alive(pid: int | None) -> bool:
    """Whether a process with this pid exists on this machine (it may be another user's); a
    zombie, exited but not yet reaped, counts as gone."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def runs(pid: int, run_id: str) -> bool:
    """Whether pid is alive and is a trainer of this run (not a recycled pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return run_id.encode() in cmdline or f"{protocol.ENV_RUN_ID}={run_id}".encode() in (
        environ(pid)
    )


def each_process(name: str) -> Iterator[tuple[int, bytes]]:
    """Every live process's pid and the bytes of its /proc/<pid>/<name> (cmdline, stat, ...);
    a process that ended while /proc was read is passed over."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            data = (entry / name).read_bytes()
        except OSError:
            continue
        yield int(entry.name), data


def descendants(pid: int) -> list[int]:
    """Every process below pid (torchrun's workers and theirs), read from /proc."""
    parents: dict[int, list[int]] = {}
    for child, stat in each_process("stat"):
        # the command name, in parentheses, may hold anything: the fields after it are fixed
        ppid = int(stat.rsplit(b")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(child)
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_tree(pid: int, sig: int, known: set[int]) -> None:
    """Signal pid's process group and every descendant's (workers lead groups of their own),
    and the known workers that outlived their agent (then they are no longer its children)."""
    for target in [*descendants(pid), *known, pid]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(target, sig)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(target, sig)


def rank_codes(folder: Path | None, name: str = "rank") -> dict[int, int]:
    """What each rank wrote to the exit folder: `rank-<n>` its status, `pid-<n>` its pid."""
    codes: dict[int, int] = {}
    for path in folder.glob(f"{name}-*") if folder is not None else []:
        with contextlib.suppress(ValueError, OSError):
            codes[int(path.name.removeprefix(f"{name}-"))] = int(path.read_text().strip())
    return codes


def stop_left_behind(pid: int, grace: float) -> None:
    """Stop the trainer a dead daemon left behind. It was already told to stop (its daemon's
    death reached it as SIGTERM, or its ranks see the daemon gone at the next step) and may
    be writing its checkpoint: it gets `grace` seconds, then SIGKILL; a second SIGTERM would
    make it exit at once."""
    workers = descendants(pid)  # a torchrun agent's: they outlive it for a while
    for kill, wait in ((False, grace), (True, 5.0)):
        if kill:
            for target in [pid, *workers]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(target, signal.SIGKILL)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not any(Path(f"/proc/{p}").exists() for p in [pid, *workers]):
                return
            time.sleep(0.05)


@dataclass
class Child:
    run_pk: int
    run_id: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]
    stop_reason: str | None = None  # "cancel" or "shutdown" once SIGTERM was sent
    term_sent_at: float | None = None
    killed: bool = False
    last_beat: float = 0.0
    world_size: int = 1  # above 1, proc is torchrun's agent and the ranks write exit_dir
    exit_dir: Path | None = None
    workers: set[int] = field(default_factory=set)  # the agent's, seen at each heartbeat
    attempt: int | None = None  # the claim's attempt: every write about the run is fenced on it
    renewed_at: float = 0.0  # when the lease was last renewed (this process's clock)

    def kill(self) -> None:
        """SIGKILL, now: the trainer's group, and with several processes every worker."""
        self.killed = True
        if self.world_size > 1:
            kill_tree(self.proc.pid, signal.SIGKILL, self.live_workers())
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            self.proc.kill()

    def live_workers(self) -> set[int]:
        """The agent's workers still alive (checked to be this run's, not a recycled pid)."""
        if self.proc.poll() is None:
            self.workers.update(descendants(self.proc.pid))
        self.workers.update(rank_codes(self.exit_dir, "pid").values())
        self.workers = {p for p in self.workers if runs(p, self.run_id)}
        return self.workers
