"""oneseekctl pull, and the downloads in `status` and `cancel`, against a Hub on loopback
(tests/hubserver.py), with no daemon: the command carries its download out itself."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from homes import ctl
from hubserver import HubServer
from modelfactory import make_model

REPO = "tiny-org/Tiny-Llama"


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubServer]:
    server = HubServer()
    folder = make_model(tmp_path / "built", "Tiny-Llama")
    server.add(REPO, {p.name: p.read_bytes() for p in folder.iterdir()})
    with server.running():
        yield server


def env(hub: HubServer) -> dict[str, str | None]:
    return {"HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": None}


def rows(home: Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    con = sqlite3.connect(home / "oneseek.db")
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def test_pull_without_a_daemon_downloads_here_into_the_catalog(home: Path, hub: HubServer) -> None:
    result = ctl(home, "pull", REPO, env=env(hub))
    assert result.exit_code == 0, result.output
    commit = hub.repos[REPO].branches["main"]
    assert "No daemon runs on" in result.output
    assert f"Pulled {REPO} at commit {commit} into base_models/Tiny-Llama" in result.output
    assert "catalog key tiny-llama, ready." in result.output
    assert rows(home, "SELECT status, source FROM model_downloads") == [("succeeded", "pull")]
    assert rows(home, "SELECT state, source_commit FROM base_models") == [("ready", commit)]
    verify = ctl(home, "ledger", "verify")  # the model_downloaded event is signed and chained
    assert verify.exit_code == 0, verify.output
    # the same pull again downloads nothing and says so the same way
    served = dict(hub.served_bytes)
    again = ctl(home, "pull", REPO, "--json", env=env(hub))
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["status"] == "succeeded" and hub.served_bytes == served


def test_pull_names_the_reason_it_failed_and_exits_1(home: Path, hub: HubServer) -> None:
    missing = ctl(home, "pull", "tiny-org/Nowhere", env=env(hub))
    assert missing.exit_code == 1
    assert "Error: no repository tiny-org/Nowhere on http://" in missing.output
    assert "check the repository id for a typo" in missing.output
    as_json = ctl(home, "pull", "tiny-org/Nowhere", "--json", env=env(hub))
    assert as_json.exit_code == 1 and json.loads(as_json.stdout)["status"] == "failed"
    error = json.loads(as_json.stderr)  # errors as every command gives them with --json
    assert error["exit_code"] == 1 and "no repository tiny-org/Nowhere" in error["error"]
    bad = ctl(home, "pull", "not-a-repo", env=env(hub))
    assert bad.exit_code == 1 and "is not a Hub repository id" in bad.output
    named = ctl(home, "pull", REPO, "--name", "../up", env=env(hub))
    assert named.exit_code == 1 and "cannot be a model folder's name" in named.output
    offline = ctl(home, "pull", REPO, env={**env(hub), "HF_HUB_OFFLINE": "1"})
    assert offline.exit_code == 1 and "[hub] offline is set" in offline.output
    assert f"copy the folder to {home.resolve()}/models" in offline.output
    assert not (home / "models" / "oneseek-7b-zero" / "base_models" / "Tiny-Llama").exists()


def test_detach_queues_status_lists_and_cancel_cancels_a_download(
    home: Path, hub: HubServer
) -> None:
    queued = ctl(home, "pull", f"{REPO}@main", "--name", "Mine", "--detach", "--json", env=env(hub))
    assert queued.exit_code == 0, queued.output
    row_id = json.loads(queued.stdout)["download"]
    [(status, folder, source, host)] = rows(
        home, "SELECT status, folder, source, host FROM model_downloads"
    )
    assert (status, folder, source) == ("pending", "Mine", "pull")
    assert host  # this host's daemon downloads it, not another on a shared database
    status = json.loads(ctl(home, "status", "--json").stdout)
    [listed] = status["downloads"]
    assert (listed["name"], listed["repository"], listed["status"]) == (
        f"download-{row_id}",
        REPO,
        "pending",
    )
    text = ctl(home, "status").output
    assert f"download: download-{row_id} {REPO}: waiting for a daemon (none runs here)" in text
    cancelled = ctl(home, "cancel", REPO)
    assert cancelled.exit_code == 0, cancelled.output
    assert f"Cancelled download-{row_id} ({REPO}) (it had not started)." in cancelled.output
    assert rows(home, "SELECT status FROM model_downloads") == [("cancelled",)]
    again = ctl(home, "cancel", f"download-{row_id}", "--json")
    assert json.loads(again.stdout)["ended"] is True
    assert ctl(home, "cancel", "download-99").exit_code == 1
    assert json.loads(ctl(home, "status", "--json").stdout)["downloads"] == []


def test_status_shows_a_running_download_s_bytes_rate_and_eta(home: Path) -> None:
    ctl(home, "db", "upgrade")
    con = sqlite3.connect(home / "oneseek.db")
    con.execute(
        "INSERT INTO model_downloads (repository, status, host, bytes_total, bytes_done, "
        "progress) VALUES ('tiny-org/Big', 'running', 'h', 3145728, 1048576, "
        '\'{"rate": 524288, "eta_s": 4.0, "file": "model.safetensors"}\')'
    )
    con.commit()
    con.close()
    text = ctl(home, "status").output
    assert (
        "download: download-1 tiny-org/Big: model.safetensors: 1.0 MiB of 3.0 MiB (33%), "
        "512.0 KiB/s, ETA 4s"
    ) in text
    [listed] = json.loads(ctl(home, "status", "--json").stdout)["downloads"]
    assert listed["bytes_done"] == 1048576 and listed["progress"]["rate"] == 524288


def test_pull_says_the_catalog_state_of_a_model_it_cannot_read(home: Path, hub: HubServer) -> None:
    weights = (home.parent / "built" / "Tiny-Llama" / "model.safetensors").read_bytes()
    hub.add("tiny-org/Broken", {"config.json": b"{not json", "model.safetensors": weights})
    result = ctl(home, "pull", "tiny-org/Broken", env=env(hub))
    assert result.exit_code == 0, result.output  # the download itself is whole and checked
    assert "catalog key broken, invalid (" in result.output
    assert ", ready" not in result.output
