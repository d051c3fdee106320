"""The daemon's Prometheus endpoint (issue 29, `[metrics] listen`): a real daemon scraped over
real HTTP while it takes requests and trains a tiny model; a scrape while another connection
holds SQLite's write lock; a metric with no value yet is absent; the setting's checks."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from daemon import DaemonProcess, query, run_state, wait_for
from homes import training_home
from modelfactory import make_model
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from oneseekd.cli import main as ctl
from oneseekd.config import load_config
from oneseekd.errors import ConfigError

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, by name and labels (the parser raises on bad text)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def named(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def scraped_with(port: int, name: str) -> Samples | None:
    """A scrape's samples once it shows `name`, else None (for wait_for)."""
    samples = parse(scrape(port))
    return samples if named(samples, name) else None


def scrape(port: int, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as reply:
        assert reply.status == 200
        return str(reply.read().decode("utf-8"))


def with_metrics(home: Path, refresh: float = 0.2) -> None:
    """`[metrics]` on, on any free port of loopback (the daemon logs the one it bound)."""
    with (home / "oneseekd.toml").open("a") as fh:
        fh.write(f'[metrics]\nlisten = "127.0.0.1:0"\nrefresh_seconds = {refresh}\n')


@contextmanager
def metrics_daemon(home: Path) -> Iterator[tuple[DaemonProcess, int]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONESEEK_")}
    proc = DaemonProcess(home, env={**env, "ONESEEK_LOG_FORMAT": "json"})
    try:
        listening = proc.wait_event("metrics_listening", timeout=60)
        assert listening["address"].startswith("127.0.0.1:")
        yield proc, int(listening["port"])
    finally:
        proc.kill()


def drop_request(home: Path, name: str, body: dict[str, Any]) -> None:
    requests = home / "requests"
    requests.mkdir(exist_ok=True)
    (requests / f"{name}.json.tmp").write_text(json.dumps(body))
    os.rename(requests / f"{name}.json.tmp", requests / f"{name}.json")


def promtool_check(text: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        return
    done = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.timeout(600)
def test_a_daemon_with_metrics_is_scraped_while_it_takes_requests_and_trains(
    tmp_path: Path, cache: Path
) -> None:
    from trainhomes import FAST, tiny_home

    home = tiny_home(tmp_path / "home", cache, {"Tiny-Llama": "llama"})
    hold = tmp_path / "hold"  # the trainer waits at its first step until the test releases it
    hold.mkdir()
    toml = home / "oneseekd.toml"
    command = [sys.executable, str(Path(__file__).parent / "holdtrainer.py"), str(hold)]
    toml.write_text(
        toml.read_text().replace("[trainer]\n", f"[trainer]\ncommand = {json.dumps(command)}\n")
    )
    with_metrics(home)
    with metrics_daemon(home) as (proc, port):
        proc.wait_event("daemon_ready", timeout=60)
        first = parse(scrape(port))
        assert value(first, "oneseekd_up") == 1
        assert value(first, "oneseekd_start_time_seconds") is not None
        info = named(first, "oneseekd_info")
        assert [dict(labels)["version"] for labels in info] == ["0.1.0"]
        # nothing decided yet: no series at all, never a made-up 0
        assert named(first, "oneseekd_requests_total") == {}
        assert named(first, "oneseekd_runs_ended_total") == {}
        assert named(first, "oneseekd_run_step") == {}
        assert named(first, "oneseekd_last_certification_made_current") == {}
        assert named(first, "oneseekd_ledger_verify_ok") == {}
        assert value(first, "oneseekd_last_catalog_scan_timestamp_seconds") is not None
        loaded = wait_for(
            lambda: scraped_with(port, "oneseekd_catalog_models"),
            timeout=30,
            what="the first snapshot",
        )
        assert value(loaded, "oneseekd_catalog_models", state="ready") == 1
        assert value(loaded, "oneseekd_catalog_models", state="invalid") == 0
        assert value(loaded, "oneseekd_queue_depth") == 0
        assert value(loaded, "oneseekd_last_intake_timestamp_seconds") is not None

        # two doors, three verdicts: the same request again, as a row, is a duplicate
        body = {"base_models": ["llama"], "dataset": "civic.jsonl", **FAST}
        drop_request(home, "civic", body)
        drop_request(home, "nonsense", {"base_models": ["no-such-model"], "dataset": "civic.jsonl"})
        wait_for(lambda: query(home, "SELECT count(*) FROM runs")[0][0] == 1, what="the file's run")
        con = sqlite3.connect(home / "oneseek.db", timeout=30)
        with con:
            con.execute("INSERT INTO training_requests (payload) VALUES (?)", (json.dumps(body),))
        con.close()

        # while it trains, held at its first step: the running run's figures, as its
        # progress reports them
        wait_for(lambda: (hold / "held").exists(), timeout=300, what="the trainer's first step")
        during = wait_for(
            lambda: scraped_with(port, "oneseekd_run_step"), timeout=30, what="a step in a scrape"
        )
        [(labels, step)] = named(during, "oneseekd_run_step").items()
        run_id, model = dict(labels)["run_id"], dict(labels)["model"]
        assert model == "tiny-llama" and step >= 0
        assert value(during, "oneseekd_run_steps", run_id=run_id, model=model) is not None
        assert value(during, "oneseekd_run_epochs", run_id=run_id, model=model) == FAST["epochs"]
        assert value(during, "oneseekd_run_tokens_per_second", run_id=run_id, model=model) >= 0
        assert value(during, "oneseekd_run_eta_seconds", run_id=run_id, model=model) is not None
        assert value(during, "oneseekd_run_trainer_resident_bytes", run_id=run_id) > 0
        assert value(during, "oneseekd_runs_started_total", how="started") == 1
        assert value(during, "oneseekd_runs", state="running") == 1
        promtool_check(scrape(port))
        (hold / "release").touch()

        # the run ends; every counter has moved as the daemon logged
        wait_for(
            lambda: run_state(home, run_id) == "succeeded",
            timeout=400,
            interval=0.2,
            what="the run to succeed",
        )

        def settled() -> Samples | None:
            now = parse(scrape(port))
            done = value(now, "oneseekd_runs_ended_total", state="succeeded", outcome="succeeded")
            return now if done == 1 and not named(now, "oneseekd_run_info") else None

        after = wait_for(settled, timeout=30, what="the ends counted and the run gone")
        assert value(after, "oneseekd_requests_total", door="file", verdict="accepted") == 1
        assert value(after, "oneseekd_requests_total", door="file", verdict="rejected") == 1
        assert value(after, "oneseekd_requests_total", door="database", verdict="duplicate") == 1
        assert named(after, "oneseekd_requests_total").keys() == {
            (("door", "file"), ("verdict", "accepted")),
            (("door", "file"), ("verdict", "rejected")),
            (("door", "database"), ("verdict", "duplicate")),
        }
        assert value(after, "oneseekd_runs_started_total", how="started") == 1
        assert value(after, "oneseekd_runs", state="succeeded") == 1
        assert value(after, "oneseekd_queue_depth") == 0
        assert named(after, "oneseekd_run_step") == {}  # no run: absent, not 0
        # the ledger's events by kind, the trainer's included
        ledger = dict(query(home, "SELECT event, count(*) FROM ledger_events GROUP BY event"))
        for event, n in ledger.items():
            assert value(after, "oneseekd_ledger_events_total", event=event) == n, event
        assert ledger["dna_v2_training_completed"] == 1
        # the last certification: the run's gate, as its oneseek_dna.json has it
        last_run = run_id
        link = home / "models" / "oneseek-certified" / last_run
        gate = json.loads((link / "oneseek_dna.json").read_text())["gate"]
        [(labels, made)] = named(after, "oneseekd_last_certification_made_current").items()
        assert dict(labels)["run_id"] == last_run
        assert made == (1 if gate["made_current"] else 0)
        difference = gate["models"]["tiny-llama"]["base"]["difference"]
        gain = value(
            after,
            "oneseekd_last_certification_bpb_gain",
            run_id=last_run,
            model="tiny-llama",
        )
        assert gain == pytest.approx(-difference)
        promtool_check(scrape(port))

        # the last verify's result, once `oneseekctl ledger verify` has run
        verify = CliRunner().invoke(ctl, ["--home", str(home), "ledger", "verify"])
        assert verify.exit_code == 0, verify.output
        verified = wait_for(
            lambda: scraped_with(port, "oneseekd_ledger_verify_ok"),
            timeout=30,
            what="the verify result in a scrape",
        )
        assert value(verified, "oneseekd_ledger_verify_ok") == 1
        assert value(verified, "oneseekd_ledger_verify_problems") == 0
    assert proc.proc.returncode is not None


def test_a_scrape_while_another_connection_holds_the_write_lock_answers_within_100_ms(
    tmp_path: Path,
) -> None:
    """The issue's bound: a scrape answers within 100 ms while SQLite's write lock is held.
    Honest: the lock is shown to be held (a write with no busy wait fails) before and after
    the scrapes, and each timing is a whole HTTP request on a fresh connection."""
    home = training_home(tmp_path / "home")
    with_metrics(home, refresh=0.1)
    with metrics_daemon(home) as (proc, port):
        proc.wait_event("daemon_ready", timeout=60)
        wait_for(lambda: "oneseekd_catalog_models" in scrape(port), timeout=30, what="a snapshot")
        holder = sqlite3.connect(home / "oneseek.db", timeout=0, isolation_level=None)
        probe = sqlite3.connect(home / "oneseek.db", timeout=0, isolation_level=None)

        def locked() -> bool:
            try:
                probe.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                assert "locked" in str(exc)
                return True
            probe.execute("ROLLBACK")
            return False

        assert not locked()
        holder.execute("BEGIN IMMEDIATE")
        try:
            assert locked()
            time.sleep(0.5)  # let the snapshot thread (every 0.1 s) meet the lock
            timings, texts = [], []
            for _ in range(7):
                started = time.perf_counter()
                texts.append(scrape(port, timeout=10))
                timings.append(time.perf_counter() - started)
            assert locked()  # held through every scrape
        finally:
            holder.execute("ROLLBACK")
        holder.close()
        probe.close()
        for text in texts:
            assert value(parse(text), "oneseekd_up") == 1
            assert value(parse(text), "oneseekd_catalog_models", state="ready") == 3
        timings.sort()
        # the median, so that one scheduling hiccup of a shared CI machine is not the verdict;
        # every one of them well inside the lock's hold (a scrape that waited on the lock
        # would wait for the ROLLBACK: seconds)
        assert timings[len(timings) // 2] < 0.100, timings
        assert timings[-1] < 1.0, timings


# --- what a scrape shows with no values yet ----------------------------------------------------
def _registry(home: Path, listen: str = "127.0.0.1:0") -> tuple[Any, CollectorRegistry]:
    from oneseekd.metrics.server import Metrics

    (home / "oneseekd.toml").write_text(f'[metrics]\nlisten = "{listen}"\n')
    metrics = Metrics(load_config(home, env={}))
    return metrics, metrics.registry


def test_a_metric_with_no_value_yet_is_absent_never_zero(home: Path) -> None:
    from oneseekd.metrics.snapshot import Certified, RunNow, Snapshot

    metrics, registry = _registry(home)
    bare = parse(generate_latest(registry).decode())
    assert value(bare, "oneseekd_up") == 1
    for name in (
        "oneseekd_requests_total",
        "oneseekd_catalog_models",
        "oneseekd_queue_depth",
        "oneseekd_last_intake_timestamp_seconds",
        "oneseekd_last_catalog_scan_timestamp_seconds",
        "oneseekd_ledger_verify_ok",
        "oneseekd_run_loss",
    ):
        assert named(bare, name) == {}, name
    # a run that has not reported a loss yet, a certification whose model was not measured
    run = RunNow("r1", "tiny", "cpu", None, {"step": 0.0, "steps": 9.0}, None)
    held = Certified("r0", "dna", None, False, {})
    metrics.collector.snapshot = Snapshot(
        at=1.0,
        models={"ready": 1},
        runs={"running": 1},
        running=(run,),
        certified=held,
        ledger={},
        downloads={"pending": 0, "running": 0},
        fetching=(),
        verify=None,
    )
    now = parse(generate_latest(registry).decode())
    assert value(now, "oneseekd_run_step", run_id="r1", model="tiny") == 0  # reported: 0
    assert named(now, "oneseekd_run_loss") == {}
    assert named(now, "oneseekd_run_trainer_resident_bytes") == {}
    assert named(now, "oneseekd_run_device_memory_bytes") == {}
    assert value(now, "oneseekd_last_certification_made_current", run_id="r0", dna="dna") == 0
    assert named(now, "oneseekd_last_certification_bpb_gain") == {}
    assert named(now, "oneseekd_last_certification_timestamp_seconds") == {}
    assert named(now, "oneseekd_download_fetched_bytes") == {}
    assert value(now, "oneseekd_queue_depth") == 0  # the queue was read: 0 is its value


def test_promtool_accepts_every_metric_and_the_alert_rules_of_operations_md(home: Path) -> None:
    """Every family present at once (a run, a certification, a download, a verify), as
    `promtool check metrics` lints it; and the docs' rules as `promtool check rules` reads
    them. The scrapes of the real daemon above are checked too where promtool is found."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not on PATH (Debian's prometheus package; .ci/run installs it)")
    from oneseekd.metrics.snapshot import Certified, Fetching, RunNow, Snapshot
    from oneseekd.metrics.verified import Verified

    metrics, registry = _registry(home)
    figures = {"epoch": 1.0, "epochs": 3.0, "step": 4.0, "steps": 9.0, "loss": 2.5}
    figures |= {"tokens_per_second": 900.0, "eta_seconds": 12.0, "device_memory_bytes": 2e9}
    metrics.collector.snapshot = Snapshot(
        at=time.time(),
        models={"ready": 2, "missing": 0},
        runs={"queued": 1, "running": 1},
        running=(RunNow("r2", "tiny", "cpu", "training", figures, 123456),),
        certified=Certified("r1", "dna", time.time(), True, {"tiny": (-0.2, -0.3, -0.1)}),
        ledger={"run_started": 2},
        downloads={"pending": 1, "running": 1},
        fetching=(Fetching(7, "org/name", 10, 100),),
        verify=Verified(time.time(), True, 9, 2, 0),
    )
    metrics.marks.intake = metrics.marks.catalog_scan = time.time()
    metrics.events.observe("info", {"event": "request_accepted", "source": "file"})
    metrics.events.observe("error", {"event": "run_failed", "outcome": "oom"})
    metrics.events.observe("info", {"event": "download_succeeded"})
    text = generate_latest(registry).decode()
    for family in ("run_device_memory_bytes", "last_certification_bpb_gain_upper"):
        assert f"oneseekd_{family}{{" in text
    promtool_check(text)
    doc = (Path(__file__).resolve().parent.parent / "docs" / "operations.md").read_text()
    rules = next(b for b in doc.split("```yaml\n")[1:] if b.startswith("groups:"))
    (home / "rules.yml").write_text(rules.split("```")[0])
    done = subprocess.run(
        [promtool, "check", "rules", str(home / "rules.yml")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 3 rules found" in done.stdout


def test_the_counters_count_logged_events_below_the_log_level(home: Path) -> None:
    """The counters see the events the daemon logs, also those its log_level leaves out."""
    import io

    import structlog

    from oneseekd.logs import configure_logging

    metrics, registry = _registry(home)
    out = io.StringIO()
    configure_logging("warning", stream=out, human=False, observer=metrics.events.observe)
    try:
        log = structlog.get_logger("oneseekd")
        log.info("request_accepted", request=1, run_id="r", source="file", name="a.json")
        log.warning("request_rejected", request=2, source="database", name=None, problems=[])
        log.info("run_started", run_id="r", pid=1, attempt=1)
        log.error("run_failed", run_id="r", outcome="oom", error="out of memory")
        log.info("run_cancelled", run_id="q", while_state="queued")
    finally:
        configure_logging("info")
    written = [json.loads(line)["event"] for line in out.getvalue().splitlines()]
    assert written == ["request_rejected", "run_failed"]  # the info lines filtered out
    samples = parse(generate_latest(registry).decode())
    assert value(samples, "oneseekd_requests_total", door="file", verdict="accepted") == 1
    assert value(samples, "oneseekd_requests_total", door="database", verdict="rejected") == 1
    assert value(samples, "oneseekd_runs_started_total", how="started") == 1
    assert value(samples, "oneseekd_runs_ended_total", state="failed", outcome="oom") == 1
    assert value(samples, "oneseekd_runs_ended_total", state="cancelled", outcome="cancelled") == 1
    assert value(samples, "oneseekd_log_events_total", level="info") == 3
    assert named(samples, "oneseekd_runs_ended_total").keys() == {
        (("outcome", "oom"), ("state", "failed")),
        (("outcome", "cancelled"), ("state", "cancelled")),
    }


def test_the_endpoint_imports_no_torch() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, oneseekd.daemon.service, oneseekd.metrics.server; "
            "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout == "[]\n"


def test_metrics_off_by_default_imports_no_prometheus_client(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, oneseekd.daemon.service, oneseekd.cli.ledger; "
            "print(sorted(m for m in sys.modules if m.startswith('prometheus_client')))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout == "[]\n"
    assert load_config(tmp_path, env={}).metrics.listen is None


# --- the setting ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("given", "listen"),
    [
        ('"127.0.0.1:9464"', ("127.0.0.1", 9464)),
        ('"9464"', ("127.0.0.1", 9464)),  # a bare port: loopback
        ("9464", ("127.0.0.1", 9464)),
        ('"0.0.0.0:9100"', ("0.0.0.0", 9100)),
        ('"[::1]:9464"', ("::1", 9464)),
        ('"gpu-3.lan:9464"', ("gpu-3.lan", 9464)),
        ('""', None),
    ],
)
def test_metrics_listen_is_read(tmp_path: Path, given: str, listen: object) -> None:
    (tmp_path / "oneseekd.toml").write_text(f"[metrics]\nlisten = {given}\n")
    assert load_config(tmp_path, env={}).metrics.listen == listen


def test_a_bad_metrics_setting_is_refused_with_every_problem(tmp_path: Path) -> None:
    (tmp_path / "oneseekd.toml").write_text('[metrics]\nlisten = ":9464"\nrefresh_second = 1\n')
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path, env={})
    problems = err.value.problems
    assert problems == [
        "[metrics]: unknown setting 'refresh_second' (did you mean 'refresh_seconds'?) "
        "(known: listen, refresh_seconds)",
        'metrics.listen must name the address to listen on (e.g. "127.0.0.1:9464" for this '
        'host only, "0.0.0.0:9464" for every interface, "[::1]:9464" for IPv6 loopback), '
        "got ':9464'",
    ]
    for bad, said in [
        ('"::1:9464"', 'an IPv6 address goes in brackets, as in "[::1]:9464"'),
        ('"127.0.0.1:99999"', "must end in a port from 1 to 65535"),
        ('"127.0.0.1"', "must end in a port from 1 to 65535"),
        ('"my host:80"', "'my host' is neither an IP address nor a host name"),
        ("true", "must be HOST:PORT as a string"),
        ('"[fe80::zz]:1"', "'fe80::zz' is not an IPv6 address"),
    ]:
        (tmp_path / "oneseekd.toml").write_text(f"[metrics]\nlisten = {bad}\n")
        with pytest.raises(ConfigError) as err:
            load_config(tmp_path, env={})
        assert said in err.value.problems[0], (bad, err.value.problems)


def _start(home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONESEEK_")}
    return subprocess.run(
        [sys.executable, "-m", "oneseekd", "--home", str(home), "--exit-when-idle"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**env, "ONESEEK_LOG_FORMAT": "json"},
    )


def test_the_daemon_refuses_a_bad_address_and_a_port_in_use_with_exit_78(home: Path) -> None:
    make_model(home / "models" / "oneseek-7b-zero" / "base_models", "Tiny")
    (home / "oneseekd.toml").write_text('[metrics]\nlisten = "localhost:0x50"\n')
    done = _start(home)
    assert done.returncode == 78, done.stderr
    assert "metrics.listen must end in a port" in done.stderr
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        (home / "oneseekd.toml").write_text(f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
        done = _start(home)
    finally:
        taken.close()
    assert done.returncode == 78, done.stderr
    assert f"cannot serve metrics on 127.0.0.1:{port}" in done.stderr
    assert "remove it to run without metrics" in done.stderr
    assert not (home / "oneseek.db").exists()  # refused before the database was opened


def test_the_verify_record_reads_back_and_a_damaged_one_is_none(home: Path) -> None:
    from oneseekd.home import HomePaths
    from oneseekd.metrics import verified

    paths = HomePaths(home)
    assert verified.last(paths) is None
    assert verified.record(paths, False, 12, 3, 2) is None
    got = verified.last(paths)
    assert got is not None and (got.ok, got.events, got.artifacts, got.problems) == (
        False,
        12,
        3,
        2,
    )
    assert abs(got.at - time.time()) < 3600
    verified.verified_path(paths).write_text('{"at": "yesterday", "ok": true}')
    assert verified.last(paths) is None
