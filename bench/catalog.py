"""Benchmark of the model catalog: full-scan time per folder and event-to-catalog latency.

Builds N synthetic model folders (config.json plus a small safetensors file with a real header)
under a temporary HOME/models/oneseek-7b-zero/base_models and measures, in one process:

- a baseline: a bare loop doing the least conceivable work per folder (list it, stat each
  file, parse config.json, read the safetensors header), the yardstick every ratio is against;
- scan() with no cache, Catalog.full_scan() into a fresh database, and a warm full_scan();
- with a Watcher running and a daemon-like loop in a thread, the time from renaming a complete
  new folder into base_models to its row being `ready` in the catalog.

Goals: 10,000 folders scanned in under 2 s; a new folder ready within settle + 0.5 s.
Machines are shared and noisy, so each timing is the best of --repeat runs and is printed as a
ratio to the baseline measured in the same run.

Run: .venv/bin/python bench/catalog.py [--quick] [--sizes 1000 10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import structlog
from sqlalchemy import Engine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from modelfactory import safetensors_bytes, write_config

from oneseekd.catalog.live import Catalog
from oneseekd.catalog.scan import Root, model_roots, scan
from oneseekd.catalog.watch import Watcher
from oneseekd.config import load_config
from oneseekd.db.engine import make_engine
from oneseekd.db.migrate import upgrade

TENSORS = {f"layers.{i}.weight": [8, 8] for i in range(8)}  # ~0.6 kB header, 2 kB of data
WEIGHTS = safetensors_bytes(TENSORS)
SCAN_GOAL_S = 2.0  # for 10,000 folders
SCAN_GOAL_N = 10_000
LATENCY_SLACK_S = 0.5
TICK_S = 0.05


def make_folder(folder: Path) -> None:
    folder.mkdir()
    write_config(folder)
    (folder / "model.safetensors").write_bytes(WEIGHTS)


def best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def baseline(base: str) -> None:
    """The least work a scan can do: list, stat every file, parse config and header."""
    for name in sorted(os.listdir(base)):
        folder = os.path.join(base, name)
        with os.scandir(folder) as entries:
            for entry in entries:
                entry.stat()
        with open(os.path.join(folder, "config.json"), "rb") as fh:
            json.loads(fh.read())
        with open(os.path.join(folder, "model.safetensors"), "rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            json.loads(fh.read(length))


class TimedCatalog(Catalog):
    """Records when the first watch event for each folder arrived."""

    def __init__(self, engine: Engine, roots: list[Root], settle: float) -> None:
        super().__init__(engine, roots, settle)
        self.first_event: dict[str, float] = {}

    def touch(self, path: Path, now: float | None = None) -> None:
        folder = self.folder_of(path)
        if folder is not None:
            self.first_event.setdefault(folder.name, time.perf_counter())
        super().touch(path, now)


class OverflowCount(logging.Handler):
    """Counts watchdog's inotify queue overflows instead of printing each warning."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += "events were lost" in record.getMessage()


def fresh_catalog(home: Path, roots: list[Root], name: str, settle: float) -> TimedCatalog:
    engine = make_engine(f"sqlite:///{home / name}")
    upgrade(engine)
    return TimedCatalog(engine, roots, settle)


def bench_scan(home: Path, roots: list[Root], n: int, repeat: int) -> None:
    base = str(roots[0].path)
    baseline(base)  # warm the page cache so every phase below starts from the same state
    base_s = best(lambda: baseline(base), repeat)
    scan_s = best(lambda: scan(roots, settle=0.0), repeat)
    cold: list[float] = []
    catalog = None
    for i in range(repeat):
        catalog = fresh_catalog(home, roots, f"cold-{i}.db", 0.0)
        started = time.perf_counter()
        done = catalog.full_scan()
        cold.append(time.perf_counter() - started)
        assert done.total == n, f"catalog holds {done.total} models, expected {n}"
        if i < repeat - 1:
            catalog.engine.dispose()
    assert catalog is not None
    warm_s = best(catalog.full_scan, repeat)
    catalog.engine.dispose()
    print(f"  {'phase':<28}{'total s':>9}{'µs/folder':>11}{'x baseline':>12}")
    for label, secs in (
        ("baseline (bare loop)", base_s),
        ("scan(), no cache", scan_s),
        ("full_scan(), fresh DB", min(cold)),
        ("full_scan(), warm", warm_s),
    ):
        print(f"  {label:<28}{secs:>9.3f}{secs / n * 1e6:>11.1f}{secs / base_s:>12.2f}")
    goal = SCAN_GOAL_S * n / SCAN_GOAL_N
    scope = "goal" if n == SCAN_GOAL_N else f"goal scaled to {n:,} folders"
    for label, secs in (
        ("scan()", scan_s),
        ("full_scan() fresh DB", min(cold)),
        ("full_scan() warm", warm_s),
    ):
        verdict = "PASS" if secs < goal else "MISS"
        print(f"  {scope} < {goal:.2f} s, {label}: {verdict} ({secs:.3f} s)")


def daemon_loop(catalog: Catalog, stop: threading.Event, ready: dict[str, float]) -> None:
    """What the daemon's loop does: process due folders, sleep until the next one is due."""
    while not stop.is_set():
        done = catalog.process_due()
        if done is not None:
            at = time.perf_counter()
            for change in done.changes:
                if change.new_state == "ready":
                    ready.setdefault(change.key, at)
        due = catalog.next_due()
        timeout = TICK_S if due is None else min(TICK_S, due - time.time())
        catalog.wakeup.wait(max(timeout, 0.0))
        catalog.wakeup.clear()


def bench_latency(home: Path, roots: list[Root], settle: float, count: int) -> None:
    catalog = fresh_catalog(home, roots, "latency.db", settle)
    time.sleep(settle)  # let the synthetic folders settle before the first scan
    catalog.full_scan()
    overflows = OverflowCount()
    watchdog_log = logging.getLogger("watchdog")
    watchdog_log.addHandler(overflows)
    watchdog_log.propagate = False
    watcher = Watcher(catalog)
    started = time.perf_counter()
    watcher.start()
    watch_s = time.perf_counter() - started
    stop = threading.Event()
    ready: dict[str, float] = {}
    loop = threading.Thread(target=daemon_loop, args=(catalog, stop, ready), daemon=True)
    loop.start()
    staging = home / "staging"
    staging.mkdir()
    latency: list[float] = []
    delivery: list[float] = []
    try:
        for i in range(count):
            name = f"bench-new-{i:03d}"
            make_folder(staging / name)
            renamed = time.perf_counter()
            os.rename(staging / name, roots[0].path / name)
            deadline = renamed + settle + 5.0
            while name not in ready and time.perf_counter() < deadline:
                time.sleep(0.005)
            if name not in ready:
                print(f"  {name} not ready after {settle + 5.0:.1f} s")
                continue
            latency.append(ready[name] - renamed)
            delivery.append(catalog.first_event.get(name, ready[name]) - renamed)
    finally:
        stop.set()
        catalog.wakeup.set()
        loop.join(timeout=5)
        watcher.stop()
        catalog.engine.dispose()
        watchdog_log.removeHandler(overflows)
        watchdog_log.propagate = True
    print(f"  watcher start: {watch_s:.3f} s, inotify queue overflows: {overflows.count}")
    if not latency:
        print(f"  event latency: MISS (no folder became ready, goal {settle + LATENCY_SLACK_S} s)")
        return
    med, worst = statistics.median(latency), max(latency)
    print(f"  event latency, settle {settle:g} s, {len(latency)} of {count} new folders:")
    print(
        f"    rename -> first watch event: median {statistics.median(delivery) * 1e3:.1f} ms, "
        f"max {max(delivery) * 1e3:.1f} ms"
    )
    print(
        f"    rename -> ready: median {med:.3f} s, max {worst:.3f} s "
        f"(x settle: {med / settle:.2f} / {worst / settle:.2f})"
    )
    print(f"    beyond settle:   median {med - settle:.3f} s, max {worst - settle:.3f} s")
    goal = settle + LATENCY_SLACK_S
    verdict = "PASS" if worst < goal and len(latency) == count else "MISS"
    print(f"  goal ready < settle + {LATENCY_SLACK_S} s = {goal:.2f} s (max): {verdict}")


def run(n: int, repeat: int, settle: float, count: int) -> None:
    home = Path(tempfile.mkdtemp(prefix="oneseek-bench-"))
    try:
        config = load_config(home, env={})
        config.home.ensure()
        roots = model_roots(config)
        started = time.perf_counter()
        for i in range(n):
            make_folder(roots[0].path / f"synth-model-{i:05d}")
        print(
            f"\nN = {n:,} folders (built in {time.perf_counter() - started:.1f} s), "
            f"best of {repeat}"
        )
        bench_scan(home, roots, n, repeat)
        bench_latency(home, roots, settle, count)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--quick", action="store_true", help="sizes 200 and 1000, 5 events")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--settle", type=float, default=0.5)
    parser.add_argument("--events", type=int, default=20)
    args = parser.parse_args()
    sizes, count = ([200, 1000], 5) if args.quick else (args.sizes, args.events)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    print(f"catalog bench: python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    for n in sizes:
        run(n, args.repeat, args.settle, count)


if __name__ == "__main__":
    main()
