"""What a scrape answers about the database and the home, read by a thread of its own every
`[metrics] refresh_seconds` and kept in memory as one frozen Snapshot: a scrape reads the last
one and never the database, so a held write lock, a slow disk or a long query can make the
figures older (`oneseekd_snapshot_timestamp_seconds` says how old), never the scrape slower.

The queries are `oneseekctl status`'s (oneseekd/cli/read.py's Reader over the daemon's engine);
the running run's figures are its `progress` (what the trainer reports, as `status` shows it),
the last certification's are its oneseek_dna.json gate (certify/layout.py, as `status` and
`show` read it). In WAL mode a read never waits for a writer."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from oneseekd.certify.layout import run_dna, run_gate
from oneseekd.cli.read import RUN_COLUMNS, Reader, Row
from oneseekd.home import HomePaths
from oneseekd.metrics import verified
from oneseekd.metrics.verified import Verified

log = structlog.get_logger("oneseekd")

CATALOG_STATES = ("ready", "incomplete", "invalid", "missing")
CERTIFIED_LOOKED_AT = 5  # this host's newest succeeded runs, for one whose folder is here


@dataclass(frozen=True)
class RunNow:
    """A running run of this host, as its progress reports it (None: not reported yet)."""

    run_id: str
    model: str | None
    device: str | None
    phase: str | None
    figures: dict[str, float]  # epoch, epochs, step, steps, loss, tokens_per_s, eta_s, ...
    trainer_resident_bytes: int | None


@dataclass(frozen=True)
class Certified:
    """This host's newest certified run: the gate's verdict in its oneseek_dna.json."""

    run_id: str
    dna: str
    finished_at: float | None
    made_current: bool | None
    # per model: (difference, low, high) of held-out bits per byte, trained minus base
    differences: dict[str, tuple[float, float, float]]


@dataclass(frozen=True)
class Fetching:
    """A download this host carries out."""

    download: int
    repository: str
    bytes_done: int | None
    bytes_total: int | None


@dataclass(frozen=True)
class Snapshot:
    at: float  # when it was read (seconds since the epoch)
    models: dict[str, int]  # this host's catalog by state
    runs: dict[str, int]  # the queue by state (every host's: one queue)
    running: tuple[RunNow, ...]
    certified: Certified | None
    ledger: dict[str, int]  # ledger events by kind, since the ledger began
    downloads: dict[str, int]  # pending (any host may claim), running (this host's)
    fetching: tuple[Fetching, ...]
    verify: Verified | None
    read_seconds: float = 0.0  # how long the read took


# progress keys exported as gauges (trainer/reporting.py writes them): key -> metric suffix
PROGRESS_FIGURES = {
    "epoch": "epoch",
    "epochs": "epochs",
    "step": "step",
    "steps": "steps",
    "loss": "loss",
    "tokens_per_s": "tokens_per_second",
    "eta_s": "eta_seconds",
    # the trainer's device memory in use, when it reports it (the daemon never asks torch)
    "device_memory_bytes": "device_memory_bytes",
}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def resident_bytes(pid: Any) -> int | None:
    """VmRSS of a process of this machine, or None (gone, not ours to read, not Linux)."""
    if not isinstance(pid, int) or pid <= 0:
        return None
    try:
        status = Path(f"/proc/{pid}/status").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            parts = line.split()
            return int(parts[1]) * 1024 if len(parts) > 1 and parts[1].isdigit() else None
    return None


def run_now(row: Row) -> RunNow:
    progress = row.progress if isinstance(row.progress, dict) else {}
    figures = {
        suffix: number
        for key, suffix in PROGRESS_FIGURES.items()
        if (number := _number(progress.get(key))) is not None
    }

    def label(key: str) -> str | None:
        value = progress.get(key)
        return str(value) if isinstance(value, str) and value else None

    return RunNow(
        run_id=str(row.run_id),
        model=label("model"),
        device=label("device"),
        phase=label("phase"),
        figures=figures,
        trainer_resident_bytes=resident_bytes(row.pid),
    )


def certified_of(home: HomePaths, row: Row) -> Certified | None:
    dna = run_dna(home, row.run_id)
    if dna is None:
        return None
    gate = run_gate(home, dna) or {}
    made = gate.get("made_current")
    differences: dict[str, tuple[float, float, float]] = {}
    models = gate.get("models")
    for key, verdict in (models if isinstance(models, dict) else {}).items():
        base = verdict.get("base") if isinstance(verdict, dict) else None
        if not isinstance(base, dict):
            continue  # not measured: no figure, no series
        difference, interval = _number(base.get("difference")), base.get("interval")
        if difference is None or not isinstance(interval, list) or len(interval) != 2:
            continue
        low, high = (_number(v) for v in interval)
        if low is not None and high is not None:
            differences[str(key)] = (difference, low, high)
    return Certified(
        run_id=str(row.run_id),
        dna=dna,
        finished_at=row.finished_at.timestamp() if row.finished_at else None,
        made_current=made if isinstance(made, bool) else None,
        differences=differences,
    )


@dataclass
class SnapshotReader:
    """Reads a Snapshot; keeps what never changes once read (the ledger's counts up to the
    last event seen, a certified run's gate) so that each refresh reads only what is new."""

    engine: Engine
    home: HomePaths
    host: str
    _ledger: dict[str, int] = field(default_factory=dict)
    _ledger_seq: int = 0
    _certified: dict[str, Certified] = field(default_factory=dict)

    def read(self) -> Snapshot:
        started = time.perf_counter()
        with self.engine.connect() as conn:

            def query(sql: str, params: dict[str, Any]) -> tuple[list[str], list[Sequence[Any]]]:
                result = conn.execute(text(sql), params)
                return list(result.keys()), [tuple(r) for r in result]

            reader = Reader(query, "", light=False, errors=(SQLAlchemyError,))
            models = self._catalog(reader)
            runs = reader.queue_counts()
            running = tuple(run_now(r) for r in reader.running() if r.host == self.host)
            succeeded = reader.rows(
                f"SELECT {RUN_COLUMNS} FROM runs WHERE state = 'succeeded' "
                "AND (host = :host OR host IS NULL) ORDER BY finished_at DESC LIMIT :limit",
                host=self.host,
                limit=CERTIFIED_LOOKED_AT,
            )
            self._read_ledger(reader)
            pending = reader.downloads()
        certified = self._last_certified(succeeded)
        ours = [d for d in pending if d.status == "running" and d.host == self.host]
        return Snapshot(
            at=time.time(),
            models=models,
            runs=runs,
            running=running,
            certified=certified,
            ledger=dict(self._ledger),
            downloads={
                "pending": sum(d.status == "pending" for d in pending),
                "running": len(ours),
            },
            fetching=tuple(
                Fetching(int(d.id), str(d.repository), d.bytes_done, d.bytes_total) for d in ours
            ),
            verify=verified.last(self.home),
            read_seconds=time.perf_counter() - started,
        )

    def _catalog(self, reader: Reader) -> dict[str, int]:
        rows = reader.rows(
            "SELECT state, COUNT(*) AS n FROM base_models WHERE host = :host GROUP BY state",
            host=self.host,
        )
        found = {str(r.state): int(r.n) for r in rows}
        return {**{s: 0 for s in CATALOG_STATES}, **found}

    def _read_ledger(self, reader: Reader) -> None:
        rows = reader.rows(
            "SELECT event, COUNT(*) AS n, MAX(seq) AS top FROM ledger_events WHERE seq > :after "
            "GROUP BY event",
            after=self._ledger_seq,
        )
        for r in rows:
            self._ledger[str(r.event)] = self._ledger.get(str(r.event), 0) + int(r.n)
            self._ledger_seq = max(self._ledger_seq, int(r.top))

    def _last_certified(self, succeeded: list[Row]) -> Certified | None:
        """The newest of them whose certified folder this home holds (its gate read once)."""
        for row in succeeded:
            found = self._certified.get(row.run_id) or certified_of(self.home, row)
            if found is not None:
                self._certified[row.run_id] = found
                return found
        return None


class Refresher:
    """The thread that reads a Snapshot every `every` seconds and hands it to `publish`; a read
    that fails is logged once per run of failures, and the last snapshot stays (its timestamp
    says how old it is)."""

    def __init__(
        self, read: Callable[[], Snapshot], publish: Callable[[Snapshot], None], every: float
    ) -> None:
        self._read = read
        self._publish = publish
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-snapshot", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self._publish(self._read())
            except Exception as exc:  # the endpoint keeps serving the last snapshot
                failures += 1
                if failures == 1:
                    log.warning(
                        "metrics_snapshot_failed",
                        error=f"{type(exc).__name__}: {exc}",
                        detail="the endpoint serves the last figures read; retried every "
                        f"{self._every:g} s",
                    )
            else:
                if failures:
                    log.info("metrics_snapshot_recovered", after_failures=failures)
                failures = 0
            self._stop.wait(self._every)
