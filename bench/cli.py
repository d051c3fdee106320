"""Benchmark of oneseekctl's read commands: wall time and peak memory, as an operator's loop sees.

A temporary home from tests/homes.py (three ready models, datasets/civic.jsonl, migrated and
scanned, no daemon) with 20 queued runs. Each command is started as its own process, as a
shell loop or a script starts it, N times in turn with a bare `python -c pass`; the median
wall time and the median peak resident memory (ru_maxrss of that process alone) are printed,
with the ratio to the bare start measured in the same session. The goals (issue 12):
`status`, `models`, `runs` and `show` in at most 0.12 s and 45 MB on a quiet machine, where
a bare Python start takes about 0.015 s. On a shared, busy machine compare the ratios.

`--full` also times `status` and `models` with the light path switched off (a wrapper that
replaces oneseekd.cli.read's light reader), to show what the light path saves.

Run: .venv/bin/python bench/cli.py [--samples 15] [--full]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
GOAL_S = 0.12
GOAL_MB = 45.0
# the full path: the same command with oneseekd.cli.read's light reader switched off
FULL = (
    "import sys; from oneseekd.cli import read, main; "
    "read._light = lambda obj, catalog: None; sys.argv[0] = 'oneseekctl'; main()"
)


def make_home(root: Path) -> tuple[Path, str]:
    """Built by a child process: this one stays a bare Python, so that the processes it
    forks start from a small resident size and ru_maxrss measures the command alone."""
    done = subprocess.run(
        [sys.executable, __file__, "--make-home", str(root)],
        capture_output=True,
        text=True,
        check=True,
    )
    home, run_id = json.loads(done.stdout.splitlines()[-1])
    return Path(home), run_id


def _make_home(root: Path) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from homes import open_home, request, training_home

    from oneseekd.intake.accept import Intake
    from oneseekd.logs import configure_logging

    configure_logging("warning")
    home = training_home(root / "home")
    config, engine = open_home(home)
    intake = Intake(engine, config.home)
    run_id = ""
    for seed in range(20):
        verdict = intake.take_bytes(json.dumps(request(seed=seed)).encode(), source="submit")
        run_id = verdict.run_id or run_id
    engine.dispose()
    print(json.dumps([str(home), run_id]))


def measure(argv: list[str]) -> tuple[float, float, float]:
    """(wall seconds, peak MB, CPU seconds) of one process. CPU time (user + system) moves
    less than wall time when other jobs share the cores."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {proc.stderr.read().decode()}")  # type: ignore[union-attr]
    return seconds, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=15)
    parser.add_argument("--full", action="store_true", help="time the full path too")
    parser.add_argument("--make-home", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make_home:
        _make_home(Path(args.make_home))
        return
    with tempfile.TemporaryDirectory() as tmp:
        home, run_id = make_home(Path(tmp))
        ctl = [str(BIN / "oneseekctl"), "--home", str(home)]
        commands: dict[str, list[str]] = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "status": [*ctl, "status"],
            "status --json": [*ctl, "status", "--json"],
            "models": [*ctl, "models"],
            "runs": [*ctl, "runs"],
            f"show {run_id[:10]}...": [*ctl, "show", run_id],
        }
        if args.full:
            full = [sys.executable, "-c", FULL, "--home", str(home)]
            commands["status (full path)"] = [*full, "status"]
            commands["models (full path)"] = [*full, "models"]
        samples: dict[str, list[tuple[float, float, float]]] = {name: [] for name in commands}
        for argv in commands.values():
            measure(argv)  # warm the page cache and the .pyc files
        for _ in range(args.samples):
            for name, argv in commands.items():
                samples[name].append(measure(argv))
    bare_s = statistics.median(s for s, _, _ in samples["python -c pass"])
    bare_mb = statistics.median(m for _, m, _ in samples["python -c pass"])
    bare_cpu = statistics.median(c for _, _, c in samples["python -c pass"])
    print(f"median of {args.samples}, each command its own process, no daemon running")
    print(
        f"{'command':<24}{'seconds':>9}{'x bare':>8}{'cpu s':>8}{'x bare':>8}"
        f"{'peak MB':>9}{'x bare':>8}  goal"
    )
    for name, got in samples.items():
        seconds = statistics.median(s for s, _, _ in got)
        mb = statistics.median(m for _, m, _ in got)
        cpu = statistics.median(c for _, _, c in got)
        goal = (
            ""
            if name == "python -c pass" or "full" in name
            else ("ok" if seconds <= GOAL_S and mb <= GOAL_MB else f"over {GOAL_S} s")
        )
        wall = f"{seconds:>9.3f}{seconds / bare_s:>8.1f}"
        used = f"{cpu:>8.3f}{cpu / max(bare_cpu, 1e-6):>8.1f}{mb:>9.1f}{mb / bare_mb:>8.1f}"
        print(f"{name:<24}{wall}{used}  {goal}")
    print(
        f"goal: {GOAL_S} s and {GOAL_MB:g} MB on a quiet machine, where a bare start is about "
        "0.015 s (8x); on a busy one compare the ratios"
    )


if __name__ == "__main__":
    main()
