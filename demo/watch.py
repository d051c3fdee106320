"""The demo's progress line while oneseekd runs: `python demo/watch.py BIN HOME DAEMON_PID`.

On a terminal one line is redrawn in place; otherwise (a log, CI) a line is printed only when
what it says changes. It reads `oneseekctl status --json`, as any script may.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

from oneseekd.cli.status import describe_progress
from oneseekd.daemon.procs import alive


def line_of(status: dict, seen_run: bool = False) -> str:
    """What the daemon is doing, in one line."""
    run = status.get("current_run")
    if run:
        progress = run.get("progress") or {}
        if progress:
            return f"{run['run_id']}: {describe_progress(progress)}"
        return f"{run['run_id']}: starting the trainer (loading the model and the dataset)"
    daemon = status.get("daemon") or {}
    queued = (status.get("queue") or {}).get("queued", 0)
    if queued:
        return f"{queued} queued: waiting for the trainer to start"
    if seen_run:  # the daemon's own activity line is refreshed only every few seconds
        recent = (status.get("recent_runs") or [{}])[0]
        if recent.get("run_id"):
            return f"{recent['run_id']}: {recent.get('state')}; oneseekd: nothing left, exiting"
        return "oneseekd: nothing left to do, exiting"
    activity = daemon.get("activity")
    if daemon.get("running") and activity:
        return f"oneseekd: {activity}"
    return "starting oneseekd: scanning the models, taking in the request"


def main(bin_dir: str, home: str, pid: int) -> None:
    tty = sys.stdout.isatty()
    shown = ""
    seen_run = False
    while alive(pid):
        result = subprocess.run(
            [f"{bin_dir}/oneseekctl", "--home", home, "status", "--json"],
            capture_output=True,
            text=True,
            check=False,
        )
        try:
            status = json.loads(result.stdout)
            seen_run = seen_run or bool(status.get("current_run"))
            line = line_of(status, seen_run)
        except (json.JSONDecodeError, TypeError, KeyError):
            line = shown  # the database is being created: keep what was shown
        if line and line != shown:
            if tty:
                width = shutil.get_terminal_size().columns - 1
                sys.stdout.write("\r\x1b[K" + line[:width])
            else:
                sys.stdout.write(line + "\n")
            sys.stdout.flush()
            shown = line
        time.sleep(1.0)
    if tty and shown:
        sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
