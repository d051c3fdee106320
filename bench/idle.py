"""Idle cost of the daemon: resident memory and CPU over a quiet minute, 1,000 models in the
catalog.

Builds a home whose base_models/ holds N synthetic model folders (tests/modelfactory.py, one
8x8 tensor each), starts the real daemon (`python -m oneseekd --home HOME`, the operator's
defaults), waits until every folder is `ready` in the catalog and the daemon has logged
`daemon_ready`, lets it settle for a few seconds, then samples for --seconds:

- RSS: VmRSS from /proc/<pid>/status at the start and the end of the window (and VmHWM);
- CPU: utime + stime from /proc/<pid>/stat at the start and the end, as a percentage of one
  core over the window.

Baselines are measured the same way over the same window, in the same session (machines are
shared and noisy: compare ratios, not absolute figures):

- `python -c "import time; time.sleep(N)"`: the interpreter alone;
- the same after importing the daemon's libraries (sqlalchemy, pydantic, structlog, click,
  watchdog, nacl.signing): what the dependencies cost before oneseekd does anything.

Goals (issue 6): under 80 MB RSS and under 1% of one core.

`--metrics` measures the daemon with the Prometheus endpoint on (`[metrics] listen`, issue 29;
its snapshot read every 15 s, the default) and scraped over HTTP every --scrape-interval seconds
through the window, as Prometheus would: the same goals hold.

`--against CHECKOUT` runs another checkout's daemon (an earlier commit: `git worktree add
/tmp/before COMMIT`) beside this one, on a home of its own built alike, through the same
windows (`--rounds` of them) and the same scrapes, and prints each one's CPU and RSS and their
ratio. On a shared machine the idle figure of the same code moves by a factor of two from one
hour to the next; two daemons measured side by side see the same hour, so the ratio holds
where the absolute figures do not.

`--why` adds the diagnosis of where the figures come from:

- memory: the RSS each group of imports adds, in the order the daemon imports them, measured
  in a fresh interpreter that keeps `rich` out as the daemon's entry point does
  (oneseekd/entry.py), and which of alembic and rich the daemon's own imports loaded (neither,
  on a database at head); `python -X importtime -m oneseekd --home HOME` names the modules;
- CPU: the CPU time of each thing the idle main loop does, timed in this process on a home of
  the same size, times how often the idle loop does it (every IDLE_TICK_SECONDS tick, once
  an EMPTY_QUEUE_LOOK_SECONDS, once a HEARTBEAT_SECONDS), as a share of one core.

Run: .venv/bin/python bench/idle.py [--seconds 60] [--models 1000] [--metrics] [--json] [--why]
     .venv/bin/python bench/idle.py --against /tmp/before [--rounds 4] [--seconds 120] [--metrics]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from modelfactory import make_model

RSS_GOAL_MB = 80.0
CPU_GOAL_PERCENT = 1.0
SETTLE_AFTER_READY_S = 3.0
TINY = {"w": [8, 8]}  # one 8x8 F32 tensor: a 256-byte weight file per model
LIBRARIES = "sqlalchemy, pydantic, structlog, click, watchdog, nacl.signing"
SCRAPE_INTERVAL_S = 15.0  # Prometheus' usual scrape_interval


@dataclass(frozen=True)
class Sample:
    rss_kb: int
    hwm_kb: int
    cpu_ticks: int
    at: float


@dataclass(frozen=True)
class Figures:
    name: str
    pid: int
    rss_start_mb: float
    rss_end_mb: float
    hwm_mb: float
    cpu_percent: float
    seconds: float


def sample(pid: int) -> Sample:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    # /proc/<pid>/stat: the command may hold spaces, so split after its closing parenthesis;
    # utime and stime are fields 14 and 15 (1-based), i.e. 11 and 12 after the state field
    stat = Path(f"/proc/{pid}/stat").read_text()
    rest = stat[stat.rindex(")") + 2 :].split()
    return Sample(
        rss_kb=int(fields["VmRSS"].split()[0]),
        hwm_kb=int(fields["VmHWM"].split()[0]),
        cpu_ticks=int(rest[11]) + int(rest[12]),
        at=time.monotonic(),
    )


def figures(name: str, pid: int, start: Sample, end: Sample) -> Figures:
    ticks = os.sysconf("SC_CLK_TCK")
    seconds = end.at - start.at
    return Figures(
        name=name,
        pid=pid,
        rss_start_mb=start.rss_kb / 1024,
        rss_end_mb=end.rss_kb / 1024,
        hwm_mb=end.hwm_kb / 1024,
        cpu_percent=100.0 * (end.cpu_ticks - start.cpu_ticks) / ticks / seconds,
        seconds=seconds,
    )


def build_home(root: Path, models: int, metrics: bool = False) -> None:
    base = root / "models" / "oneseek-7b-zero" / "base_models"
    for i in range(models):
        make_model(base, f"Idle-Model-{i:05d}", tensors=TINY, tokenizer=False)
    (root / "datasets").mkdir(parents=True)
    (root / "requests").mkdir()
    if metrics:  # any free port of loopback; the daemon logs the one it bound
        (root / "oneseekd.toml").write_text('[metrics]\nlisten = "127.0.0.1:0"\n')


def metrics_port(log_path: Path) -> int | None:
    for line in log_path.read_text(errors="replace").splitlines():
        if '"metrics_listening"' in line:
            return int(json.loads(line)["port"])
    return None


def scrape(port: int) -> int:
    """One scrape of /metrics, as Prometheus makes it; the bytes it answered."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return len(reply.read())


def ready_models(db: Path) -> int:
    if not db.exists():
        return 0
    con = sqlite3.connect(db, timeout=30)
    try:
        (count,) = con.execute("SELECT count(*) FROM base_models WHERE state = 'ready'").fetchone()
    except sqlite3.OperationalError:
        return 0
    finally:
        con.close()
    return int(count)


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen[bytes]
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise SystemExit(f"the daemon exited with {proc.returncode} while waiting for {what}")
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


def wait_ready(
    log_path: Path, db: Path, models: int, proc: subprocess.Popen[bytes], timeout: float
) -> None:
    """Until the daemon has logged daemon_ready and catalogued `models` ready models."""
    wait_until(lambda: b'"daemon_ready"' in log_path.read_bytes(), timeout, "daemon_ready", proc)
    wait_until(lambda: ready_models(db) >= models, timeout, f"{models} ready models", proc)


def stop(daemon: subprocess.Popen[bytes]) -> None:
    """SIGTERM, as systemd stops it; SIGKILL after 30 s."""
    daemon.send_signal(signal.SIGTERM)
    try:
        daemon.wait(30)
    except subprocess.TimeoutExpired:
        daemon.kill()
        daemon.wait()


def start_baselines(seconds: float) -> list[tuple[str, subprocess.Popen[bytes]]]:
    sleep = f"import time; time.sleep({seconds + 30})"
    return [
        ("python, sleeping", subprocess.Popen([sys.executable, "-c", sleep])),
        (
            "python + the daemon's libraries, sleeping",
            subprocess.Popen([sys.executable, "-c", f"import {LIBRARIES}; {sleep}"]),
        ),
    ]


def measure(
    seconds: float,
    models: int,
    keep: bool,
    command: list[str] | None = None,
    metrics: bool = False,
    scrape_every: float = SCRAPE_INTERVAL_S,
) -> dict[str, object]:
    """Build the home, start the daemon (or `command` + `--home HOME`), measure the window;
    with `metrics`, the endpoint on and scraped every `scrape_every` seconds in it."""
    root = Path(tempfile.mkdtemp(prefix="oneseek-idle-"))
    home = root / "home"
    try:
        started = time.perf_counter()
        build_home(home, models, metrics)
        built = time.perf_counter() - started
        env = {k: v for k, v in os.environ.items() if not k.startswith("ONESEEK_")}
        log_path = root / "daemon.log"
        with log_path.open("wb") as log:
            daemon = subprocess.Popen(
                [*(command or [sys.executable, "-m", "oneseekd"]), "--home", str(home)],
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=env,
            )
        baselines = start_baselines(seconds)
        try:
            loaded_at = time.perf_counter()
            wait_ready(log_path, home / "oneseek.db", models, daemon, timeout=120)
            loaded = time.perf_counter() - loaded_at
            port = metrics_port(log_path) if metrics else None
            if metrics and port is None:
                raise SystemExit("metrics asked for, but the daemon logged no metrics_listening")
            scraped = [scrape(port)] if port is not None else []  # the first, as Prometheus'
            time.sleep(SETTLE_AFTER_READY_S)
            name = "oneseekd (idle, metrics on)" if metrics else "oneseekd (idle)"
            procs = [(name, daemon), *baselines]
            lines_before = log_path.read_bytes().count(b"\n")
            first = {name: sample(p.pid) for name, p in procs}
            window_ends = time.monotonic() + seconds
            while port is not None and time.monotonic() + scrape_every < window_ends:
                time.sleep(scrape_every)
                scraped.append(scrape(port))
            time.sleep(max(window_ends - time.monotonic(), 0.0))
            last = {name: sample(p.pid) for name, p in procs}
            lines_during = log_path.read_bytes().count(b"\n") - lines_before
            if daemon.poll() is not None:
                raise SystemExit(f"the daemon exited with {daemon.returncode} during the window")
        finally:
            for _, proc in baselines:
                proc.kill()
                proc.wait()
            stop(daemon)
        results = [figures(name, p.pid, first[name], last[name]) for name, p in procs]
        return {
            "models": models,
            "seconds": seconds,
            "build_seconds": round(built, 1),
            "catalog_ready_seconds": round(loaded, 1),
            "log_lines_in_window": lines_during,
            "scrapes": len(scraped),
            "scrape_bytes": scraped[-1] if scraped else None,
            "results": [asdict(r) for r in results],
            "home": str(home) if keep else None,
        }
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


HERE = Path(__file__).resolve().parent.parent  # this checkout


def side_by_side(
    other: Path, seconds: float, rounds: int, models: int, metrics: bool, scrape_every: float
) -> int:
    """This checkout's daemon and `other`'s, each on a home of its own built alike, measured
    through the same windows and scraped alike; each round's CPU and RSS, and the ratio."""
    other = other.resolve()
    if not (other / "oneseekd" / "__init__.py").is_file():
        raise SystemExit(f"{other} is not a oneseekd checkout (no oneseekd/__init__.py there)")
    root = Path(tempfile.mkdtemp(prefix="oneseek-idle-ab-"))
    daemons: dict[str, tuple[Path, subprocess.Popen[bytes]]] = {}
    try:
        for name, code in (("this", HERE), ("against", other)):
            home = root / name
            build_home(home, models, metrics)
            env = {k: v for k, v in os.environ.items() if not k.startswith("ONESEEK_")}
            env["PYTHONPATH"] = str(code)  # and the working directory: `-m` looks there first
            with (root / f"{name}.log").open("wb") as log:
                daemons[name] = (
                    home,
                    subprocess.Popen(
                        [sys.executable, "-m", "oneseekd", "--home", str(home)],
                        stdout=subprocess.DEVNULL,
                        stderr=log,
                        env=env,
                        cwd=code,
                    ),
                )
        for name, (home, proc) in daemons.items():
            # two daemons load at once: each gets longer than measure()'s single one
            wait_ready(root / f"{name}.log", home / "oneseek.db", models, proc, timeout=180)
        ports = [metrics_port(root / f"{name}.log") for name in daemons] if metrics else []
        if None in ports:
            raise SystemExit("metrics asked for, but a daemon logged no metrics_listening")
        for port in ports:
            scrape(port)  # type: ignore[arg-type]
        time.sleep(SETTLE_AFTER_READY_S)
        print(
            f"side by side, {models} models each, {rounds} windows of {seconds:g} s"
            + (f", scraped every {scrape_every:g} s" if metrics else "")
            + f":\n  this:    {HERE}\n  against: {other}\n"
        )
        print(f"{'window':>6} {'this CPU %':>11} {'against CPU %':>14} {'ratio':>6}  RSS MB")
        ratios = []
        for window in range(1, rounds + 1):
            first = {name: sample(proc.pid) for name, (_, proc) in daemons.items()}
            ends = time.monotonic() + seconds
            while ports and time.monotonic() + scrape_every < ends:
                time.sleep(scrape_every)
                for port in ports:
                    scrape(port)  # type: ignore[arg-type]
            time.sleep(max(ends - time.monotonic(), 0.0))
            got = {
                name: figures(name, proc.pid, first[name], sample(proc.pid))
                for name, (_, proc) in daemons.items()
            }
            this, against = got["this"], got["against"]
            ratio = this.cpu_percent / against.cpu_percent if against.cpu_percent else float("nan")
            ratios.append(ratio)
            print(
                f"{window:>6} {this.cpu_percent:11.3f} {against.cpu_percent:14.3f} {ratio:6.2f}"
                f"  {this.rss_end_mb:.1f} / {against.rss_end_mb:.1f}"
            )
        measured = [r for r in ratios if r == r]  # nan: a window too short to see any CPU
        median = f"{statistics.median(measured):.2f}" if measured else "n/a (windows too short)"
        print(f"\nCPU ratio this / against: median {median}")
        return 0
    finally:
        for _, proc in daemons.values():
            stop(proc)
        shutil.rmtree(root, ignore_errors=True)


def report(data: dict[str, object]) -> int:
    results = [Figures(**r) for r in data["results"]]  # type: ignore[attr-defined]
    daemon, bare, libs = results
    print(
        f"oneseekd idle for {daemon.seconds:.1f} s with {data['models']} models in the catalog "
        f"(built in {data['build_seconds']} s, catalog ready {data['catalog_ready_seconds']} s "
        "after start)"
    )
    if data.get("scrapes"):
        print(
            f"metrics on: scraped {data['scrapes']} times ({data['scrape_bytes']} bytes each), "
            "once before the window and every scrape interval in it"
        )
    print()
    print(f"{'process':44} {'RSS start MB':>12} {'RSS end MB':>11} {'peak MB':>8} {'CPU %':>7}")
    for r in results:
        print(
            f"{r.name:44} {r.rss_start_mb:12.1f} {r.rss_end_mb:11.1f} {r.hwm_mb:8.1f} "
            f"{r.cpu_percent:7.3f}"
        )
    print()
    for base in (bare, libs):
        print(
            f"ratio to {base.name!r}: RSS {daemon.rss_end_mb / base.rss_end_mb:.2f} x, "
            f"CPU {daemon.cpu_percent - base.cpu_percent:+.3f} points"
        )
    rss_ok = daemon.rss_end_mb < RSS_GOAL_MB
    cpu_ok = daemon.cpu_percent < CPU_GOAL_PERCENT
    print()
    print(
        f"goal RSS < {RSS_GOAL_MB:g} MB: {'PASS' if rss_ok else 'MISS'} "
        f"({daemon.rss_end_mb:.1f} MB; {daemon.rss_end_mb - libs.rss_end_mb:.1f} MB above the "
        "libraries alone)"
    )
    print(
        f"goal CPU < {CPU_GOAL_PERCENT:g}% of a core: {'PASS' if cpu_ok else 'MISS'} "
        f"({daemon.cpu_percent:.3f}%)"
    )
    return 0 if rss_ok and cpu_ok else 1


# --- why: imports and the idle tick -------------------------------------------------------------

IMPORT_GROUPS = (
    ("sqlalchemy", "sqlalchemy"),
    ("sqlalchemy.orm", "sqlalchemy.orm"),
    ("pydantic", "pydantic"),
    ("click", "click"),
    ("pynacl (ed25519)", "nacl.signing"),
    ("watchdog", "watchdog.observers"),
    ("structlog", "structlog"),
    ("oneseekd.config, db (models, migrate)", "oneseekd.db.migrate"),
    ("oneseekd.intake (pydantic schema)", "oneseekd.intake.accept"),
    ("oneseekd.daemon.service (the rest)", "oneseekd.daemon.service"),
    ("oneseekd.daemon.command (the entry point's)", "oneseekd.daemon.command"),
    ("oneseekd.metrics.server (with [metrics] only)", "oneseekd.metrics.server"),
)

# `rich` kept out as oneseekd/entry.py keeps it out of the daemon; alembic and rich named when
# the daemon's own imports (before the metrics, which only [metrics] listen imports) load them
_IMPORT_PROBE = """
import importlib, json, re, sys
sys.modules["rich"] = None
def rss():
    text = open("/proc/self/status").read()
    return int(re.search(r"VmRSS:\\s+(\\d+)", text).group(1)) / 1024
out = [["python", rss()]]
for label, module in json.loads(sys.argv[1]):
    if module == "oneseekd.metrics.server":
        loaded = [m for m in ("alembic", "rich") if sys.modules.get(m) is not None]
        said = ", ".join(loaded) or "no alembic, no rich"
        out.append(["(the daemon's imports loaded: %s)" % said, rss()])
    importlib.import_module(module)
    out.append([label, rss()])
print(json.dumps(out))
"""


def import_costs() -> list[tuple[str, float]]:
    """RSS after each group of imports, in a fresh interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_PROBE, json.dumps(IMPORT_GROUPS)],
        capture_output=True,
        text=True,
        check=True,
    )
    return [(label, float(mb)) for label, mb in json.loads(done.stdout)]


def tick_costs(models: int, calls: int = 300) -> list[tuple[str, float, float]]:
    """What the idle main loop does, on a home of `models` ready models (the daemon's own
    components, in this process): each thing's CPU microseconds per call, and how many times a
    second the loop calls it."""
    import logging

    import structlog

    from oneseekd.catalog.live import Catalog
    from oneseekd.catalog.scan import model_roots
    from oneseekd.certify.ledger import Ledger
    from oneseekd.config import load_config
    from oneseekd.daemon.notify import Notifier
    from oneseekd.daemon.pulse import (
        EMPTY_QUEUE_LOOK_SECONDS,
        HEARTBEAT_SECONDS,
        IDLE_TICK_SECONDS,
        Pulse,
    )
    from oneseekd.daemon.supervisor import Supervisor
    from oneseekd.db.engine import DatabaseFile, make_engine
    from oneseekd.db.migrate import upgrade
    from oneseekd.hub.downloads import STALE_CHECK_SECONDS, Downloads
    from oneseekd.intake.accept import Intake
    from oneseekd.intake.dropfolder import DropFolder
    from oneseekd.intake.rows import PendingRows

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    root = Path(tempfile.mkdtemp(prefix="oneseek-idle-why-"))
    try:
        build_home(root, models)
        config = load_config(root, env={})
        config.home.ensure()
        engine = make_engine(config.db_url)
        upgrade(engine)
        catalog = Catalog(engine, model_roots(config), config.catalog.settle_seconds)
        catalog.full_scan()
        ledger = Ledger.for_home(engine, config.home)
        intake = Intake(engine, config.home, ledger=ledger)
        drops = DropFolder(intake, config.home, config.intake.settle_seconds)
        pending = PendingRows(intake, engine)
        supervisor = Supervisor(engine, config, None, ledger=ledger)
        downloads = Downloads(engine, config, ledger=ledger, catalog=catalog)
        downloads.wait_for_change = True
        downloads.tick()  # the first look, owed at start; then nothing is owed
        database = DatabaseFile(engine)
        pulse = Pulse(engine, config, Notifier(env={}))
        pulse.register()
        supervisor.live_states = pulse.live_states  # as the daemon wires it on SQLite
        downloads.running_here = pulse.downloads_running
        pending.poll()  # the first look, owed at start
        supervisor.tick()  # finds the queue empty
        every_tick = 1 / IDLE_TICK_SECONDS
        steps: list[tuple[str, Callable[[], object], float]] = [
            ("database file check (stat)", database.problem, every_tick),
            (
                "catalog.process_due() + pending()",
                lambda: (catalog.process_due(), catalog.pending()),
                every_tick,
            ),
            ("drops.poll() (scandir of requests/)", drops.poll, every_tick),
            ("loop's pulse.changed() (PRAGMA data_version)", pulse.changed, every_tick),
            ("rows.poll() (no look owed)", pending.poll, every_tick),
            ("downloads.tick() (no look owed)", downloads.tick, every_tick),
            (
                "supervisor.tick() (empty queue: one read)",
                supervisor.tick,
                1 / EMPTY_QUEUE_LOOK_SECONDS,
            ),
            (
                "heartbeat (status line, one write txn, no look after)",
                lambda: pulse.heartbeat(pulse.status_line(supervisor, downloads)),
                1 / HEARTBEAT_SECONDS,
            ),
            (
                "downloads.recover() (none running: one plain read)",
                downloads.recover,
                1 / STALE_CHECK_SECONDS,
            ),
        ]
        costs = []
        for label, step, rate in steps:
            step()  # warm caches
            started = time.process_time()
            for _ in range(calls):
                step()
            costs.append((label, 1e6 * (time.process_time() - started) / calls, rate))
        pulse.close()
        engine.dispose()
        return costs
    finally:
        shutil.rmtree(root, ignore_errors=True)


def report_why(models: int) -> None:
    print()
    print("why, memory: RSS after each group of imports (fresh interpreter, rich kept out)")
    previous = None
    for label, mb in import_costs():
        added = "" if previous is None else f"+{mb - previous:5.1f}"
        print(f"  {label:50} {mb:6.1f} MB {added}")
        previous = mb
    print()
    print(f"why, CPU: what the idle main loop does, {models} models")
    total = 0.0
    for label, micros, rate in tick_costs(models):
        share = micros * rate / 1e4
        total += share
        print(f"  {label:50} {micros:7.0f} us x {rate:4.1f}/s = {share:5.3f}% of a core")
    print(f"  {'in all':50} {'':22} {total:5.3f}% of a core")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="the quiet window (60)")
    parser.add_argument("--models", type=int, default=1000, help="catalog size (1000)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    parser.add_argument("--keep", action="store_true", help="keep the temporary home")
    parser.add_argument("--why", action="store_true", help="diagnose imports and idle ticks")
    parser.add_argument(
        "--metrics", action="store_true", help="[metrics] listen on, and scraped in the window"
    )
    parser.add_argument(
        "--scrape-interval",
        type=float,
        default=SCRAPE_INTERVAL_S,
        help=f"seconds between scrapes with --metrics ({SCRAPE_INTERVAL_S:g})",
    )
    parser.add_argument(
        "--against",
        type=Path,
        metavar="CHECKOUT",
        help="run that checkout's daemon beside this one through the same windows",
    )
    parser.add_argument("--rounds", type=int, default=4, help="windows measured with --against (4)")
    args = parser.parse_args(argv)
    if args.against is not None:
        return side_by_side(
            args.against,
            args.seconds,
            args.rounds,
            args.models,
            args.metrics,
            args.scrape_interval,
        )
    data = measure(
        args.seconds,
        args.models,
        args.keep,
        metrics=args.metrics,
        scrape_every=args.scrape_interval,
    )
    code = report(data)
    if args.why:
        report_why(args.models)
    if args.json:
        print(json.dumps(data, indent=2))
    return code


if __name__ == "__main__":
    sys.exit(main())
