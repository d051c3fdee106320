"""Downloads carried out by the real daemon (oneseekd/hub/downloads.py in its loop), against a
Hub on loopback (tests/hubserver.py) that HF_ENDPOINT points at: the admin panel's INSERT door,
a SIGKILL mid-file and the resume that follows, and a pulled model trained end to end."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon import DaemonProcess, query, run_state, run_until_idle, wait_for
from homes import ctl, drop, request
from hubserver import HubServer
from modelfactory import TINY_TENSORS, make_model
from trainhomes import FAST, cached_tiny, civic_dataset

REPO = "tiny-org/Tiny-Llama"


@pytest.fixture
def hub() -> Iterator[HubServer]:
    server = HubServer()
    with server.running():
        yield server


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def prepared_home(root: Path) -> Path:
    (root / "models" / "oneseek-7b-zero" / "base_models").mkdir(parents=True)
    (root / "oneseekd.toml").write_text(
        "[catalog]\nsettle_seconds = 0\nrescan_interval_seconds = 3600\n"
        "[intake]\nsettle_seconds = 0\n[trainer]\nheartbeat_seconds = 0.2\n"
    )
    return root


def insert(home: Path, repository: str) -> int:
    """The admin panel's door: one INSERT from a plain sqlite3 connection."""
    con = sqlite3.connect(home / "oneseek.db", timeout=30)
    cur = con.execute("INSERT INTO model_downloads (repository) VALUES (?)", (repository,))
    con.commit()
    con.close()
    assert cur.lastrowid is not None
    return cur.lastrowid


def status_of(home: Path, row_id: int) -> str:
    return str(query(home, "SELECT status FROM model_downloads WHERE id = ?", row_id)[0][0])


def test_a_row_inserted_with_sqlite3_is_downloaded_by_the_daemon(
    tmp_path: Path, hub: HubServer
) -> None:
    hub.add(REPO, files_of(make_model(tmp_path / "built", "Tiny-Llama")))
    home = prepared_home(tmp_path / "home")
    daemon = DaemonProcess(home, env={"HF_ENDPOINT": hub.endpoint})
    try:
        daemon.wait_event("daemon_ready")
        row_id = insert(home, REPO)
        wait_for(lambda: status_of(home, row_id) in ("succeeded", "failed"), 30, what="the end")
        [(status, commit, key, error)] = query(
            home, 'SELECT status, "commit", model_key, error FROM model_downloads'
        )
        assert (status, commit, key, error) == (
            "succeeded",
            hub.repos[REPO].branches["main"],
            "tiny-llama",
            None,
        )
        assert query(home, "SELECT state, source_repository FROM base_models") == [("ready", REPO)]
        assert query(home, "SELECT event FROM ledger_events") == [("model_downloaded",)]
        assert daemon.wait_event("download_succeeded")["download"] == row_id
        # `oneseekctl pull` with the daemon running: the daemon downloads, the command follows
        hub.add("tiny-org/Second", files_of(make_model(tmp_path / "two", "Second")))
        pulled = ctl(home, "pull", "tiny-org/Second", env={"HF_ENDPOINT": hub.endpoint})
        assert pulled.exit_code == 0, pulled.output
        assert "No daemon runs" not in pulled.output
        assert "catalog key second, ready" in pulled.output
        second = "SELECT pid FROM model_downloads WHERE repository = 'tiny-org/Second'"
        assert query(home, second) == [(daemon.proc.pid,)]
    finally:
        daemon.kill()


def test_a_daemon_stopped_mid_download_leaves_its_row_pending_for_the_next_start(
    tmp_path: Path, hub: HubServer
) -> None:
    hub.add(REPO, files_of(make_model(tmp_path / "built", "Tiny-Llama")))
    hub.bytes_per_second = 16 * 1024
    home = prepared_home(tmp_path / "home")
    daemon = DaemonProcess(home, env={"HF_ENDPOINT": hub.endpoint})
    try:
        daemon.wait_event("daemon_ready")
        row_id = insert(home, REPO)
        wait_for(lambda: hub.served_bytes.get("model.safetensors"), 20, what="the download")
        assert daemon.stop(signal.SIGTERM) == 0
        assert [e for e in daemon.events() if e["event"] == "download_paused"]
        assert status_of(home, row_id) == "pending"
    finally:
        daemon.kill()


def test_a_daemon_killed_mid_file_resumes_at_its_restart_fetching_only_the_missing_bytes(
    tmp_path: Path, hub: HubServer
) -> None:
    big = {**TINY_TENSORS, "model.extra.weight": [3 * 2**18]}  # 3 MiB more of float32
    folder = make_model(tmp_path / "built", "Tiny-Llama", tensors=big)
    weights = (folder / "model.safetensors").read_bytes()
    hub.add(REPO, files_of(folder))
    hub.bytes_per_second = 2 * 2**20  # about 1.5 s for the weights
    home = prepared_home(tmp_path / "home")
    first = DaemonProcess(home, env={"HF_ENDPOINT": hub.endpoint})
    try:
        first.wait_event("daemon_ready")
        row_id = insert(home, REPO)
        wait_for(
            lambda: (hub.served_bytes.get("model.safetensors") or 0) > len(weights) // 3,
            30,
            what="a third of the weights sent",
        )
    finally:
        first.kill()  # SIGKILL: no chance to write anything
    assert status_of(home, row_id) == "running"  # left behind, as a crash leaves it
    assert not (home / "models" / "oneseek-7b-zero" / "base_models" / "Tiny-Llama").exists()
    hub.bytes_per_second = None
    before = len(hub.gets)
    second = DaemonProcess(home, env={"HF_ENDPOINT": hub.endpoint})
    try:
        assert second.wait_event("download_requeued")["download"] == row_id
        wait_for(lambda: status_of(home, row_id) in ("succeeded", "failed"), 30, what="the end")
        assert status_of(home, row_id) == "succeeded"
    finally:
        second.kill()
    installed = home / "models" / "oneseek-7b-zero" / "base_models" / "Tiny-Llama"
    assert (installed / "model.safetensors").read_bytes() == weights
    gets = [g for g in hub.gets if g[0] == "model.safetensors"]
    started, resumed = gets[0], gets[-1]
    assert started[1] == 0 and resumed[1] > 0  # the restart asked for the rest only
    assert resumed[2] == len(weights) - resumed[1]  # and got only the missing bytes
    assert (
        resumed[1] <= started[2]
    )  # at most what was in flight when it was killed is fetched twice
    [(progress,)] = query(home, "SELECT progress FROM model_downloads")
    # the row counts the bytes this start fetched: the rest of the weights, the files not begun
    assert json.loads(progress)["fetched_bytes"] == sum(g[2] for g in hub.gets[before:])
    assert query(home, "SELECT state FROM base_models") == [("ready",)]


def test_a_run_trains_while_a_download_is_under_way(
    tmp_path: Path, hub: HubServer, fake_home: Path
) -> None:
    """Downloads run beside training: a run queued during a slow download is trained (by the
    fake trainer) and ends while the download still runs."""
    hub.add(REPO, files_of(make_model(tmp_path / "built", "Tiny-Llama")))
    hub.bytes_per_second = 8 * 1024  # about 25 s for the weights, unless sped up
    daemon = DaemonProcess(fake_home, env={"HF_ENDPOINT": hub.endpoint})
    try:
        daemon.wait_event("daemon_ready")
        row_id = insert(fake_home, REPO)
        wait_for(lambda: hub.served_bytes.get("model.safetensors"), 20, what="the download")
        drop(fake_home, "during.json", request())
        run_id = daemon.wait_event("run_started")["run_id"]
        wait_for(lambda: run_state(fake_home, run_id) == "succeeded", 20, what="the run")
        assert status_of(fake_home, row_id) == "running"  # the download went on meanwhile
        activity = "SELECT activity FROM daemons WHERE activity LIKE '%downloading%'"
        [(line,)] = wait_for(lambda: query(fake_home, activity), 10, what="the heartbeat")
        assert line.endswith(f"; downloading {REPO}")  # systemd's STATUS= names it too
        hub.bytes_per_second = None
        wait_for(lambda: status_of(fake_home, row_id) == "succeeded", 30, what="the download")
    finally:
        daemon.kill()


@pytest.mark.timeout(600)
def test_a_model_pulled_through_the_table_trains_and_its_dna_names_the_commit(
    tmp_path: Path, hub: HubServer, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.add(REPO, files_of(cached_tiny(cache, "Tiny-Llama", "llama")))
    commit = hub.repos[REPO].branches["main"]
    home = prepared_home(tmp_path / "home")
    civic_dataset(home / "datasets" / "civic.jsonl")
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    assert ctl(home, "db", "upgrade").exit_code == 0
    insert(home, REPO)  # the admin panel's door; the daemon's first start downloads it
    pulled = run_until_idle(home, timeout=120)
    assert pulled.returncode == 0, pulled.stderr[-3000:]
    assert query(home, "SELECT status FROM model_downloads") == [("succeeded",)]
    body = {"base_models": ["Tiny-Llama"], "dataset": "civic.jsonl", **FAST, "epochs": 1}
    (home / "requests").mkdir(exist_ok=True)
    (home / "requests" / "pulled.json.tmp").write_text(json.dumps(body))
    os.rename(home / "requests" / "pulled.json.tmp", home / "requests" / "pulled.json")
    trained = run_until_idle(home, timeout=300)
    assert trained.returncode == 0, trained.stderr[-3000:]
    [(run_id, state)] = query(home, "SELECT run_id, state FROM runs")
    assert state == "succeeded", (home / "logs" / f"{run_id}.log").read_text()[-3000:]
    dna = json.loads(
        (home / "models" / "oneseek-certified" / run_id / "oneseek_dna.json").read_text()
    )
    assert dna["inputs"]["base_model_sources"] == {
        "tiny-llama": {"repository": REPO, "commit": commit}
    }


@pytest.mark.timeout(600)
def test_a_request_file_naming_hf_downloads_its_model_then_trains_it(
    tmp_path: Path, hub: HubServer, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh home, one request file naming the repository: the daemon downloads the model,
    then queues and trains the run (one start, to idle), and the DNA names the commit."""
    hub.add(REPO, files_of(cached_tiny(cache, "Tiny-Llama", "llama")))
    commit = hub.repos[REPO].branches["main"]
    home = prepared_home(tmp_path / "home")
    civic_dataset(home / "datasets" / "civic.jsonl")
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    body = {"base_models": [f"hf:{REPO}"], "dataset": "civic.jsonl", **FAST, "epochs": 1}
    drop(home, "from-the-hub.json", body)
    trained = run_until_idle(home, timeout=300)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert query(home, "SELECT status, source, model_key FROM model_downloads") == [
        ("succeeded", "request", "tiny-llama")
    ]
    [(run_id, state)] = query(home, "SELECT run_id, state FROM runs")
    assert state == "succeeded", (home / "logs" / f"{run_id}.log").read_text()[-3000:]
    assert query(home, "SELECT status, download_id FROM training_requests") == [("queued", 1)]
    assert (home / "requests" / "accepted" / "from-the-hub.json").is_file()
    dna = json.loads(
        (home / "models" / "oneseek-certified" / run_id / "oneseek_dna.json").read_text()
    )
    assert dna["inputs"]["base_model_sources"] == {
        "tiny-llama": {"repository": REPO, "commit": commit}
    }
