"""A stand-in for the trainer child, for supervisor and queue tests that run in milliseconds.

What it does comes from HOME/fake/<version>.json (version of the run it is given):
  {"sleep": seconds, "exit": code, "kill_self": "SIGKILL", "ignore_term": true,
   "stderr": "text to print before exiting"}
Default: sleep 0.05 s, exit 0. Every start and end is appended to HOME/fake/starts.jsonl, so
tests can check order, overlap and resumption. On SIGTERM it "checkpoints" and exits 75 (the
protocol's EXIT_STOPPED), like the real trainer; it also stops when its supervisor dies.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path

stop = False


def on_term(_signum: int, _frame: object) -> None:
    global stop
    stop = True


def run_version(db_url: str, run_id: str) -> str:
    """The run's version, read with the plain driver (SQLAlchemy would slow every start)."""
    if db_url.startswith("postgresql"):
        import psycopg

        with psycopg.connect(db_url.replace("+psycopg", "")) as pg:
            row = pg.execute("SELECT version FROM runs WHERE run_id = %s", (run_id,)).fetchone()
    else:
        con = sqlite3.connect(db_url.removeprefix("sqlite:///"), timeout=30)
        row = con.execute("SELECT version FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        con.close()
    assert row is not None, f"no run {run_id}"
    return str(row[0])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", required=True)
    parser.add_argument("--db-url", required=True)
    parser.add_argument("--run-id", required=True)
    args = parser.parse_args()
    home = Path(args.home)
    version = run_version(args.db_url, args.run_id)
    fake = home / "fake"
    fake.mkdir(exist_ok=True)
    spec_file = fake / f"{version}.json"
    spec = json.loads(spec_file.read_text()) if spec_file.exists() else {}
    signal.signal(signal.SIGTERM, signal.SIG_IGN if spec.get("ignore_term") else on_term)
    (fake / f"started-{args.run_id}").write_text(str(os.getpid()))  # handler installed
    record = {
        "run_id": args.run_id,
        "pid": os.getpid(),
        "start": time.time(),
        "attempt": os.environ.get("ONESEEK_ATTEMPT"),
        # an attempt after the first resumes (from a checkpoint, where the real trainer has one)
        "resume": "1" if int(os.environ.get("ONESEEK_ATTEMPT") or 1) > 1 else "0",
    }
    parent = int(os.environ.get("ONESEEK_SUPERVISOR_PID", os.getppid()))
    deadline = time.monotonic() + float(spec.get("sleep", 0.05))
    code = int(spec.get("exit", 0))
    while time.monotonic() < deadline:
        if stop:
            (fake / f"checkpoint-{args.run_id}").write_text("step")
            code = 75
            break
        if os.getppid() != parent:  # the supervisor died: stop like the real trainer does
            code = 75
            break
        time.sleep(0.01)
    record["end"] = time.time()
    record["code"] = code
    with (fake / "starts.jsonl").open("a") as fh:
        fh.write(json.dumps(record) + "\n")
    if spec.get("stderr"):
        print(spec["stderr"], file=sys.stderr)
    if spec.get("kill_self") and not stop:
        os.kill(os.getpid(), getattr(signal, spec["kill_self"]))
    return code


if __name__ == "__main__":
    sys.exit(main())
