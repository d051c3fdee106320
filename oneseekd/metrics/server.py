"""The endpoint: its own CollectorRegistry (the event counters, the snapshot's gauges, the
process's own resident memory and CPU), served by prometheus_client's WSGI server from a daemon
thread. Started before the database is opened, so a port that cannot be bound stops the daemon
at once with a configuration error (exit 78), and stopped with the daemon."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine

from oneseekd import __version__
from oneseekd.config import Config
from oneseekd.errors import ConfigError
from oneseekd.metrics.events import EventCounters
from oneseekd.metrics.snapshot import Refresher, Snapshot, SnapshotReader


def _gauge(name: str, doc: str, value: float, **labels: str) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=list(labels))
    family.add_metric(list(labels.values()), value)
    return family


class Marks:
    """Times the daemon's loop marks (seconds since the epoch), None until the first."""

    def __init__(self) -> None:
        self.intake: float | None = None  # both doors polled without an error
        self.catalog_scan: float | None = None  # a full scan of the model folders finished


class SnapshotCollector(Collector):
    """The gauges: the daemon itself, the loop's marks and the last snapshot. Reads memory
    only; each family is left out while it has no value."""

    def __init__(self, config: Config, marks: Marks, started: float) -> None:
        self.config = config
        self.marks = marks
        self.started = started
        self.snapshot: Snapshot | None = None  # replaced whole by the refresher's thread

    def collect(self) -> Iterator[Metric]:
        yield _gauge("oneseekd_up", "1 while the daemon serves this endpoint", 1)
        yield _gauge(
            "oneseekd_info",
            "The daemon's version and host name (value 1)",
            1,
            version=__version__,
            host=self.config.catalog.host,
        )
        yield _gauge(
            "oneseekd_start_time_seconds", "When the daemon started (Unix time)", self.started
        )
        yield _gauge(
            "oneseekd_catalog_rescan_interval_seconds",
            "[catalog] rescan_interval_seconds: how often the full scan is due",
            self.config.catalog.rescan_interval_seconds,
        )
        if self.marks.intake is not None:
            yield _gauge(
                "oneseekd_last_intake_timestamp_seconds",
                "When the daemon's loop last polled both doors (requests/ and the "
                "training_requests rows) without an error",
                self.marks.intake,
            )
        if self.marks.catalog_scan is not None:
            yield _gauge(
                "oneseekd_last_catalog_scan_timestamp_seconds",
                "When the last full scan of the model folders finished",
                self.marks.catalog_scan,
            )
        snap = self.snapshot
        if snap is not None:
            yield from _snapshot_families(snap)


def _snapshot_families(snap: Snapshot) -> Iterator[Metric]:
    yield _gauge(
        "oneseekd_snapshot_timestamp_seconds",
        "When the figures below were read from the database",
        snap.at,
    )
    yield _gauge("oneseekd_snapshot_read_seconds", "How long that read took", snap.read_seconds)
    models = GaugeMetricFamily(
        "oneseekd_catalog_models", "This host's catalog: base models by state", labels=["state"]
    )
    for state, n in sorted(snap.models.items()):
        models.add_metric([state], n)
    yield models
    runs = GaugeMetricFamily(
        "oneseekd_runs", "Runs in the database by state (every host's)", labels=["state"]
    )
    for state, n in sorted(snap.runs.items()):
        runs.add_metric([state], n)
    yield runs
    yield _gauge(
        "oneseekd_queue_depth", "Runs queued, waiting for a trainer", snap.runs.get("queued", 0)
    )
    yield from _running(snap)
    yield from _certified(snap)
    ledger = CounterMetricFamily(
        "oneseekd_ledger_events",
        "Events in the signed ledger by kind, since it began (the trainer's included)",
        labels=["event"],
    )
    for kind, n in sorted(snap.ledger.items()):
        ledger.add_metric([kind], n)
    yield ledger
    if snap.verify is not None:
        v = snap.verify
        yield _gauge(
            "oneseekd_ledger_verify_ok",
            "1 when the last `oneseekctl ledger verify` passed, 0 when it found problems",
            1 if v.ok else 0,
        )
        yield _gauge("oneseekd_ledger_verify_timestamp_seconds", "When it ran (Unix time)", v.at)
        yield _gauge("oneseekd_ledger_verify_problems", "The problems it found", v.problems)
    downloads = GaugeMetricFamily(
        "oneseekd_downloads",
        "Downloads from the Hub not yet ended: pending (any host may claim them) and "
        "running on this host",
        labels=["status"],
    )
    for status, n in sorted(snap.downloads.items()):
        downloads.add_metric([status], n)
    yield downloads
    done = GaugeMetricFamily(
        "oneseekd_download_fetched_bytes",
        "Bytes a running download has on disk",
        labels=["download", "repository"],
    )
    total = GaugeMetricFamily(
        "oneseekd_download_size_bytes",
        "Bytes a running download will have once whole",
        labels=["download", "repository"],
    )
    for f in snap.fetching:
        labels = [f"download-{f.download}", f.repository]
        if f.bytes_done is not None:
            done.add_metric(labels, f.bytes_done)
        if f.bytes_total is not None:
            total.add_metric(labels, f.bytes_total)
    yield from (m for m in (done, total) if m.samples)


RUN_DOCS = {
    "epoch": "The running run's epoch (from 1)",
    "epochs": "Its epochs",
    "step": "Its optimizer step in the model under way",
    "steps": "Its optimizer steps in that model",
    "loss": "Its training loss (tokens' mean since the last report)",
    "tokens_per_second": "Its training tokens per second",
    "eta_seconds": "Seconds until it is expected to end",
    "device_memory_bytes": "Device memory its trainer reports in use",
}


def _running(snap: Snapshot) -> Iterator[Metric]:
    info = GaugeMetricFamily(
        "oneseekd_run_info",
        "The run this host trains (value 1): its model under way, device and phase",
        labels=["run_id", "model", "device", "phase"],
    )
    families = {
        suffix: GaugeMetricFamily(f"oneseekd_run_{suffix}", doc, labels=["run_id", "model"])
        for suffix, doc in RUN_DOCS.items()
    }
    resident = GaugeMetricFamily(
        "oneseekd_run_trainer_resident_bytes",
        "Resident memory of its trainer process",
        labels=["run_id"],
    )
    for run in snap.running:
        model = run.model or ""
        info.add_metric([run.run_id, model, run.device or "", run.phase or ""], 1)
        for suffix, value in run.figures.items():
            families[suffix].add_metric([run.run_id, model], value)
        if run.trainer_resident_bytes is not None:
            resident.add_metric([run.run_id], run.trainer_resident_bytes)
    yield from (m for m in (info, *families.values(), resident) if m.samples)


def _certified(snap: Snapshot) -> Iterator[Metric]:
    c = snap.certified
    if c is None:
        return
    if c.made_current is not None:
        yield _gauge(
            "oneseekd_last_certification_made_current",
            "1 when this host's newest certified run was made current, 0 when the gate "
            "held it back",
            1 if c.made_current else 0,
            run_id=c.run_id,
            dna=c.dna,
        )
    if c.finished_at is not None:
        yield _gauge(
            "oneseekd_last_certification_timestamp_seconds",
            "When it ended (Unix time)",
            c.finished_at,
            run_id=c.run_id,
        )
    names = ("gain", "gain_lower", "gain_upper")
    docs = (
        "Held-out bits per byte its model gained over its base (base minus trained: above 0, "
        "the trained model predicts the held-out text better)",
        "The lower end of that gain's 95 % interval (paired bootstrap)",
        "The upper end of that gain's 95 % interval",
    )
    families = [
        GaugeMetricFamily(f"oneseekd_last_certification_bpb_{n}", d, labels=["run_id", "model"])
        for n, d in zip(names, docs, strict=True)
    ]
    for model, (difference, low, high) in sorted(c.differences.items()):
        for family, value in zip(families, (-difference, -high, -low), strict=True):
            family.add_metric([c.run_id, model], value)
    yield from (m for m in families if m.samples)


class Metrics:
    """The endpoint of one daemon: `observe` counts its events, `watch` starts the snapshot
    thread once the database is open, `marks` takes the loop's times."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.registry = CollectorRegistry(auto_describe=False)
        self.events = EventCounters(self.registry)
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, cpu, fds
        self.marks = Marks()
        self.collector = SnapshotCollector(config, self.marks, time.time())
        self.registry.register(self.collector)
        self._refresher: Refresher | None = None
        self._server: Any = None

    def serve(self) -> tuple[str, int]:
        """Bind and serve; the address bound (the port, when 0 was asked for)."""
        assert self.config.metrics.listen is not None
        host, port = self.config.metrics.listen
        try:
            self._server, _ = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:  # a port in use, an address not of this host, a name unknown
            raise ConfigError(
                f"cannot serve metrics on {_shown(host, port)}: {exc.strerror or exc}",
                [
                    "[metrics] listen must name an address of this host and a free port "
                    "(`ss -ltnp` lists the ports in use); remove it to run without metrics"
                ],
            ) from exc
        return host, int(self._server.server_address[1])

    def watch(self, engine: Engine) -> None:
        """Start reading snapshots from the database (the daemon's engine)."""
        reader = SnapshotReader(engine, self.config.home, self.config.catalog.host)

        def publish(snap: Snapshot) -> None:
            self.collector.snapshot = snap

        self._refresher = Refresher(reader.read, publish, self.config.metrics.refresh_seconds)
        self._refresher.start()

    def unwatch(self) -> None:
        """Stop reading the database (the endpoint serves the last snapshot)."""
        if self._refresher is not None:
            self._refresher.stop()
            self._refresher = None

    def stop(self) -> None:
        self.unwatch()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def _shown(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
