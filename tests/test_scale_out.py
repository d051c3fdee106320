"""Several hosts, one database (docs/scale-out.md): each host's catalog rows, claims only by a
host that has the models, leases that a live daemon keeps and a dead one loses, and the two
acceptance runs on PostgreSQL: two daemons train 20 requests once each, and a daemon killed
mid-run has its run taken over and resumed from its checkpoint by the other."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from daemon import DaemonProcess, wait_for
from homes import fake_behaviour, fake_starts, migrated, request, training_home
from pausetrainer import pause_command, paused
from pg import Outsider
from sqlalchemy import Engine
from trainhomes import FAST, tiny_home

from oneseekd import queue
from oneseekd.catalog.live import Catalog
from oneseekd.catalog.scan import ScanResult, model_roots
from oneseekd.catalog.store import load_rows, reconcile
from oneseekd.certify.verify import verify
from oneseekd.config import Config, load_config
from oneseekd.db.engine import make_engine
from oneseekd.db.migrate import upgrade
from oneseekd.home import HomePaths
from oneseekd.intake.accept import Intake

A, B = "host-a", "host-b"
KB = "kb-llama-3-1-8b-swedish"


@dataclass
class Cluster:
    config: Config
    engine: Engine
    db: Outsider

    def catalog(self, host: str) -> Catalog:
        return Catalog(self.engine, model_roots(self.config), settle=0, host=host)

    def take(self, host: str, **fields: object) -> Any:
        intake = Intake(self.engine, self.config.home, host=host)
        return intake.take_bytes(json.dumps(request(**fields)).encode(), source="submit")

    def who(self, host: str, lease: float = 60.0) -> queue.Claimant:
        return queue.Claimant(None, host, lease)


@pytest.fixture
def two_hosts(tmp_path: Path, db_url: str | None) -> Iterator[Cluster]:
    """Two hosts' catalogs of the same three models in one database."""
    config, engine = migrated(training_home(tmp_path / "home"), db_url)
    c = Cluster(config, engine, Outsider(db_url, config.home.db_file))
    c.catalog(A).full_scan()
    c.catalog(B).full_scan()
    yield c
    c.db.close()
    engine.dispose()


def test_each_host_scans_and_reconciles_only_its_own_rows(two_hosts: Cluster) -> None:
    rows = load_rows(two_hosts.engine)
    assert sorted((r.host, r.key) for r in rows if r.key == KB) == [(A, KB), (B, KB)]
    reconcile(two_hosts.engine, ScanResult(), host=B)  # host-b's folders are all gone
    assert {r.state for r in load_rows(two_hosts.engine, A)} == {"ready"}
    assert {r.state for r in load_rows(two_hosts.engine, B)} == {"missing"}
    assert two_hosts.take(A).status == "queued"  # a name is known while any host has it


def test_a_run_is_claimed_only_by_a_host_that_has_its_models(two_hosts: Cluster) -> None:
    two_hosts.db.execute("UPDATE base_models SET state = 'missing' WHERE host = ?", B)
    run_id = two_hosts.take(B).run_id
    assert queue.claim_next(two_hosts.engine, None, claimant=two_hosts.who(B)) is None
    run = queue.claim_next(two_hosts.engine, None, claimant=two_hosts.who(A))
    assert run is not None and (run.run_id, run.host) == (run_id, A)
    [fp] = two_hosts.db.execute(
        "SELECT fingerprints_host FROM runs WHERE run_id = ?", run_id
    ).fetchall()
    assert fp == (A,)  # the fingerprints are host-a's, the only host that had the model


def test_models_spread_over_hosts_are_refused(two_hosts: Cluster) -> None:
    two_hosts.db.execute(
        "UPDATE base_models SET state = 'missing' WHERE host = ? AND key = 'qwen-2-5-7b'", A
    )
    two_hosts.db.execute(
        "UPDATE base_models SET state = 'missing' WHERE host = ? AND key = ?", B, KB
    )
    verdict = two_hosts.take(A, base_models=["KB-Llama-3.1-8B-Swedish", "Qwen-2.5-7B"])
    assert verdict.status == "rejected"
    assert verdict.problems == [
        f"base_models: no single host has all of {KB}, qwen-2-5-7b ready "
        f"({A} has {KB}; {B} has qwen-2-5-7b)"
    ]


def test_a_fresh_lease_is_kept_and_an_expired_one_is_taken_over(two_hosts: Cluster) -> None:
    run_id = two_hosts.take(A).run_id
    run = queue.claim_next(two_hosts.engine, None, claimant=two_hosts.who(A))
    assert run is not None and run.attempts == 1
    assert queue.heartbeat(two_hosts.engine, run.id, attempt=1, lease_seconds=60) is False
    assert queue.expired_runs(two_hosts.engine, two_hosts.who(B)) == []  # host-a is alive

    two_hosts.db.execute(
        "UPDATE runs SET lease_expires_at = '2000-01-01T00:00:00.000000Z' WHERE run_id = ?",
        run_id,
    )
    [expired] = queue.expired_runs(two_hosts.engine, two_hosts.who(B))
    assert (expired.run_id, expired.host, expired.attempts) == (run_id, A, 1)
    taken = queue.take_over(two_hosts.engine, expired, two_hosts.who(B), "taken over")
    assert taken is not None and (taken.host, taken.attempts) == (B, 2)
    # a second takeover of the same expiry finds the claim gone
    assert queue.take_over(two_hosts.engine, expired, two_hosts.who(A), "again") is None

    # host-a comes back: every write it would make about the run is refused
    with pytest.raises(
        queue.ClaimLost, match=f"is no longer this daemon's: it is running, attempt 2 on host {B}"
    ):
        queue.heartbeat(two_hosts.engine, run.id, attempt=1)
    with pytest.raises(queue.ClaimLost):
        queue.finish(two_hosts.engine, run.id, queue.Ending("failed", "error"), attempt=1)
    queue.finish(two_hosts.engine, run.id, queue.Ending("succeeded", "succeeded"), attempt=2)
    [row] = two_hosts.db.mappings("SELECT state, host, attempts FROM runs WHERE run_id = ?", run_id)
    assert row == {"state": "succeeded", "host": B, "attempts": 2}


# --- the acceptance runs: real daemons on one PostgreSQL database ------------------------------
def linked_home(owner: Path, name: str, *, lease: float, heartbeat: float) -> Path:
    """A second "host"'s home on the same machine: its own requests/, logs/, keys/ and lock,
    with models/, datasets/, checkpoints/ and the fake trainer's folder linked to the owner's,
    as a real host would mount shared storage there. Both get the same lease settings."""
    for folder in ("models", "datasets", "checkpoints", "fake"):
        (owner / folder).mkdir(parents=True, exist_ok=True)
    toml = (owner / "oneseekd.toml").read_text()
    toml = re.sub(r"heartbeat_seconds = [0-9.]+", f"heartbeat_seconds = {heartbeat}", toml)
    toml = toml.replace("[trainer]\n", f"[trainer]\nlease_seconds = {lease}\n")
    (owner / "oneseekd.toml").write_text(toml)
    home = owner.parent / name
    home.mkdir()
    for folder in ("models", "datasets", "checkpoints", "fake"):
        (home / folder).symlink_to(owner / folder)
    (home / "oneseekd.toml").write_text(toml)
    return home


def trust_each_other(*homes: Path) -> None:
    """What an operator does on a shared database: every host's pinned ledger key goes into
    every host's keys/trusted_keys, so `ledger verify` on any host trusts the others' events."""
    lines = sorted(
        {
            line
            for home in homes
            for line in (home / "keys" / "trusted_keys").read_text().splitlines()
            if line and not line.startswith("#")
        }
    )
    for home in homes:
        (home / "keys" / "trusted_keys").write_text("\n".join(lines) + "\n")


def daemon_env(host: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONESEEK_")}
    return {**env, "ONESEEK_HOST": host, "PYTHONUNBUFFERED": "1"}


def test_two_daemons_train_twenty_requests_exactly_once(tmp_path: Path, pg_url: str) -> None:
    home_a = training_home(tmp_path / "home-a")
    home_b = linked_home(home_a, "home-b", lease=5, heartbeat=0.1)
    shared = home_a
    config = load_config(home_a, pg_url, env={})
    engine = make_engine(pg_url)
    upgrade(engine)
    db = Outsider(pg_url, config.home.db_file)
    versions = [f"1.{i}" for i in range(20)]
    for version in versions:
        fake_behaviour(shared, version, sleep=0.3)
        db.execute(
            "INSERT INTO training_requests (payload) VALUES (?)",
            json.dumps(request(version=version)),
        )
    daemons = [
        subprocess.Popen(
            [sys.executable, "-m", "oneseekd", "--home", str(home), "--db-url", pg_url,
             "--exit-when-idle"],
            env=daemon_env(host), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        for home, host in ((home_a, A), (home_b, B))
    ]  # fmt: skip
    try:
        for proc in daemons:
            _, stderr = proc.communicate(timeout=90)
            assert proc.returncode == 0, stderr
    finally:
        for proc in daemons:
            proc.kill()

    starts = fake_starts(shared)
    assert sorted(s["run_id"] for s in starts) == sorted(
        r[0] for r in db.execute("SELECT run_id FROM runs").fetchall()
    )
    assert len(starts) == 20 and {s["attempt"] for s in starts} == {"1"}
    runs = db.mappings("SELECT state, attempts, host FROM runs")
    assert {(r["state"], r["attempts"]) for r in runs} == {("succeeded", 1)}
    assert {r["host"] for r in runs} == {A, B}  # both hosts trained
    assert (
        db.execute("SELECT count(*) FROM training_requests WHERE status = 'queued'").fetchone()[0]
        == 20
    )
    trust_each_other(home_a, home_b)
    report = verify(engine, HomePaths(home_a))
    assert (report.problems, report.events) == ([], 2 * 20)  # accepted and started, per run
    db.close()
    engine.dispose()


def _trainer_events(log: Path, name: str) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text().splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if event.get("event") == name:
            out.append(event)
    return out


@pytest.mark.timeout(600)
def test_a_killed_daemons_run_is_taken_over_and_resumed_from_its_checkpoint(
    tmp_path: Path, pg_url: str
) -> None:
    # host-b, the survivor, holds the files: artifacts are recorded under a home's real path
    home_b = tiny_home(tmp_path / "home-b", tmp_path / "cache", {"Tiny-Llama": "llama"})
    lease = 3.0
    home_a = linked_home(home_b, "home-a", lease=lease, heartbeat=0.2)
    pauses = tmp_path / "pauses"
    with (home_a / "oneseekd.toml").open("a") as fh:  # host-a's trainer: attempt 1 only
        fh.write(f"command = {json.dumps(pause_command(pauses, 1))}\n")
    shared = home_b
    db = Outsider(pg_url, home_a / "oneseek.db")
    first = DaemonProcess(home_a, "--db-url", pg_url, env={"ONESEEK_HOST": A})
    second: DaemonProcess | None = None
    try:
        first.wait_event("daemon_ready", timeout=30)
        # few epochs: the pause, not a long run, keeps the kill before the run's end
        body = {"base_models": ["Tiny-Llama"], "dataset": "civic.jsonl", **FAST, "epochs": 3}
        db.execute("INSERT INTO training_requests (payload) VALUES (?)", json.dumps(body))
        run_id = first.wait_event("run_started", timeout=30)["run_id"]
        checkpoints = shared / "checkpoints" / run_id / "tiny-llama"
        # paused right after its first checkpoint: the host dies mid-run, never after it ended
        wait_for(lambda: paused(pauses, run_id), timeout=60, what="the trainer paused")
        [(pid,)] = db.execute("SELECT pid FROM runs WHERE run_id = ?", run_id).fetchall()
        os.kill(pid, signal.SIGKILL)  # the host dies: its daemon and its trainer at once
        first.kill()
        killed_at = time.time()
        checkpointed = (checkpoints / "latest").read_text().strip()

        second = DaemonProcess(home_b, "--db-url", pg_url, env={"ONESEEK_HOST": B})
        taken = second.wait_event("run_taken_over", timeout=30)
        assert (taken["run_id"], taken["from_host"], taken["attempt"]) == (run_id, A, 2)
        assert time.time() - killed_at >= lease - 0.2 - 0.5  # not before the lease ran out
        wait_for(
            lambda: (
                db.execute("SELECT state FROM runs WHERE run_id = ?", run_id).fetchone()[0]
                in ("succeeded", "failed")
            ),
            timeout=300,
            what="the run to end",
        )
    finally:
        first.kill()
        if second is not None:
            second.kill()
    [run] = db.mappings(
        "SELECT state, outcome, error, attempts, host FROM runs WHERE run_id = ?", run_id
    )
    assert (run["state"], run["attempts"], run["host"]) == ("succeeded", 2, B), run["error"]
    [resumed] = _trainer_events(home_b / "logs" / f"{run_id}.log", "model_training")
    assert resumed["resumed_at_step"] == int(checkpointed.split("-")[1]) > 0
    details = [
        r[0]
        for r in db.execute(
            "SELECT e.detail FROM run_events e JOIN runs r ON r.id = e.run_id "
            "WHERE r.run_id = ? ORDER BY e.id",
            run_id,
        ).fetchall()
    ]
    assert f"taken over from host {A} after its lease expired (attempt 2)" in details
    engine = make_engine(pg_url)
    trust_each_other(home_a, home_b)
    assert verify(engine, HomePaths(home_b)).problems == []
    engine.dispose()
    db.close()
