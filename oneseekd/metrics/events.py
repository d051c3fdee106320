"""Counters of the events the daemon logs (docs/operations.md lists them), fed by the structlog
processor oneseekd.logs.configure_logging installs for an `observer`: the events are already
the daemon's record of what happened, so counting them here keeps counters out of the intake,
queue and supervisor code. Every event is seen, whatever `log_level` filters out of the log.

A label value appears with its first event: a door that has taken no request has no series
(absent, not a made-up 0)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter

# verdict events (intake/incoming.py `log_verdict`), their door in `source`
VERDICTS = {
    "request_accepted": "accepted",
    "request_rejected": "rejected",
    "request_duplicate": "duplicate",
}
# a run's attempt begins (supervisor.py, recovery.py)
STARTS = {"run_started": "started", "run_resumed": "resumed", "run_taken_over": "taken_over"}
# a run ends (queue/states.py `Ending.event`): the state it ends in
ENDS = {"run_succeeded": "succeeded", "run_failed": "failed", "run_cancelled": "cancelled"}
# a download ends (hub/downloads.py)
DOWNLOAD_ENDS = {
    "download_succeeded": "succeeded",
    "download_failed": "failed",
    "download_crashed": "failed",
    "download_cancelled": "cancelled",
}
LEVELS = {"debug", "info", "warning", "error", "critical"}


class EventCounters:
    """The counters, registered in the endpoint's own registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "oneseekd_requests",
            "Requests decided, by door (file: requests/, database: a training_requests row, "
            "submit: oneseekctl submit) and verdict (accepted, rejected, duplicate)",
            ["door", "verdict"],
            registry=registry,
        )
        self.runs_started = Counter(
            "oneseekd_runs_started",
            "Run attempts this daemon started: a claimed run (started), its own run at a "
            "restart (resumed), another host's expired run (taken_over)",
            ["how"],
            registry=registry,
        )
        self.runs_ended = Counter(
            "oneseekd_runs_ended",
            "Runs this daemon ended, by state (succeeded, failed, cancelled) and outcome "
            "(succeeded, oom, signal, stopped, error, cancelled)",
            ["state", "outcome"],
            registry=registry,
        )
        self.downloads_ended = Counter(
            "oneseekd_downloads_ended",
            "Downloads from the Hub this daemon ended, by state",
            ["state"],
            registry=registry,
        )
        self.log_events = Counter(
            "oneseekd_log_events",
            "Events the daemon logged, by level (those below log_level included)",
            ["level"],
            registry=registry,
        )

    def observe(self, method: str, event: Mapping[str, Any]) -> None:
        """One logged event (oneseekd.logs.Observer)."""
        name = event.get("event")
        level = method if method in LEVELS else "error"  # exception(), and log() by number
        self.log_events.labels(level).inc()
        if not isinstance(name, str):
            return
        if name in VERDICTS:
            self.requests.labels(str(event.get("source") or "unknown"), VERDICTS[name]).inc()
        elif name in STARTS:
            self.runs_started.labels(STARTS[name]).inc()
        elif name in ENDS:
            state = ENDS[name]
            self.runs_ended.labels(state, str(event.get("outcome") or state)).inc()
        elif name in DOWNLOAD_ENDS:
            self.downloads_ended.labels(DOWNLOAD_ENDS[name]).inc()
