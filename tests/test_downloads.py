"""The `model_downloads` door (oneseekd/hub/downloads.py), in this process: a row is claimed,
carried out in a thread, and ended with the catalog, the ledger and the reason in the row,
against a Hub on loopback (tests/hubserver.py)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import threading
from collections import namedtuple
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon import wait_for
from hubserver import HubServer
from modelfactory import make_model
from sqlalchemy import Engine, select, text

from oneseekd.catalog.live import Catalog
from oneseekd.catalog.scan import model_roots
from oneseekd.certify.ledger import Ledger
from oneseekd.config import Config, load_config
from oneseekd.db.engine import make_engine, read_session
from oneseekd.db.migrate import upgrade
from oneseekd.db.models import BaseModel, LedgerEvent, ModelDownload
from oneseekd.hub import downloads as downloads_module
from oneseekd.hub.downloads import Downloads

REPO = "tiny-org/Tiny-Llama"


def model_files(tmp_path: Path) -> dict[str, bytes]:
    folder = make_model(tmp_path / "built", "Tiny-Llama")
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    files["modeling_tiny.py"] = b"import os\n"  # never fetched
    return files


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubServer]:
    server = HubServer()
    server.add(REPO, model_files(tmp_path))
    with server.running():
        yield server


@pytest.fixture
def setup(
    home: Path, hub: HubServer, db_url: str | None
) -> Iterator[tuple[Config, Engine, Downloads]]:
    """SQLite and PostgreSQL (the db_url fixture: skipped where PostgreSQL is not installed)."""
    (home / "oneseekd.toml").write_text(
        f'[hub]\nendpoint = "{hub.endpoint}"\n[catalog]\nsettle_seconds = 5\n'
    )
    config = load_config(home, db_url, env={})
    engine = make_engine(config.db_url)
    upgrade(engine)
    catalog = Catalog(engine, model_roots(config), 5.0, host=config.catalog.host)
    catalog.full_scan()
    downloads = Downloads(
        engine, config, ledger=Ledger.for_home(engine, config.home), catalog=catalog
    )
    yield config, engine, downloads
    downloads.shutdown()
    engine.dispose()


def insert(config: Config, repository: str, **columns: object) -> int:
    """A row as another program INSERTs it: plain SQL naming only its columns."""
    engine = make_engine(config.db_url)
    names = ["repository", *columns]
    values = {"repository": repository, **columns}
    try:
        with engine.begin() as conn:
            return int(
                conn.execute(
                    text(
                        f"INSERT INTO model_downloads ({', '.join(names)}) "
                        f"VALUES ({', '.join(':' + n for n in names)}) RETURNING id"
                    ),
                    values,
                ).scalar_one()
            )
    finally:
        engine.dispose()


def update_all(config: Config, sql: str) -> None:
    engine = make_engine(config.db_url)
    try:
        with engine.begin() as conn:
            conn.execute(text(sql))
    finally:
        engine.dispose()


def row(engine: Engine, row_id: int) -> ModelDownload:
    with read_session(engine) as session:
        return session.get_one(ModelDownload, row_id)


def until_ended(engine: Engine, downloads: Downloads, row_id: int) -> ModelDownload:
    def ended() -> ModelDownload | None:
        downloads._last_look = float("-inf")
        downloads.tick()
        r = row(engine, row_id)
        return r if r.status in ("succeeded", "failed", "cancelled") else None

    return wait_for(ended, 30, what=f"download {row_id} to end")


def test_an_inserted_row_is_downloaded_into_the_catalog_ready_with_its_ledger_event(
    setup: tuple[Config, Engine, Downloads], hub: HubServer
) -> None:
    config, engine, downloads = setup
    row_id = insert(config, REPO)
    done = until_ended(engine, downloads, row_id)
    commit = hub.repos[REPO].branches["main"]
    assert (done.status, done.commit, done.model_key) == ("succeeded", commit, "tiny-llama")
    assert done.host == config.catalog.host and done.bytes_done == done.bytes_total > 0
    assert done.error is None and done.finished_at is not None
    with read_session(engine) as session:
        model = session.scalars(select(BaseModel).where(BaseModel.key == "tiny-llama")).one()
        # ready at once: the settle time (5 s here) is not waited out for a checked folder
        assert model.state == "ready"
        assert (model.source_repository, model.source_commit) == (REPO, commit)
        event = session.scalars(
            select(LedgerEvent).where(LedgerEvent.event == "model_downloaded")
        ).one()
    payload = json.loads(event.payload)
    assert (payload["repository"], payload["commit"], payload["folder"]) == (
        REPO,
        commit,
        "Tiny-Llama",
    )
    files = hub.repos[REPO].commits[commit]
    assert payload["files"] == {
        n: hashlib.sha256(files[n]).hexdigest() for n in files if not n.endswith(".py")
    }
    assert not (config.home.incoming / "Tiny-Llama").exists()


def test_a_bad_repository_id_fails_its_row_with_the_reason(
    setup: tuple[Config, Engine, Downloads],
) -> None:
    config, engine, downloads = setup
    bad = insert(config, "not a repo")
    folder = insert(config, REPO, folder="../escape")
    # what another program may write: text in a boolean, an empty folder (the default)
    odd = insert(config, REPO, folder="", allow_pickle="yes")
    assert until_ended(engine, downloads, bad).status == "failed"
    failed = row(engine, bad)
    assert "cannot pull" in (failed.error or "")
    assert any("is not a Hub repository id" in p for p in failed.problems or [])
    assert until_ended(engine, downloads, odd).status == "succeeded"
    escaped = until_ended(engine, downloads, folder)
    assert escaped.status == "failed" and "cannot be a model folder's name" in (escaped.error or "")


def test_404_and_401_end_their_rows_failed_with_a_clear_error(
    setup: tuple[Config, Engine, Downloads], hub: HubServer, tmp_path: Path
) -> None:
    config, engine, downloads = setup
    hub.add("tiny-org/Private", model_files(tmp_path / "p"), token="hf_secret")
    missing = until_ended(engine, downloads, insert(config, "tiny-org/Nowhere"))
    assert missing.status == "failed"
    assert "no repository tiny-org/Nowhere" in (missing.error or "")
    private = until_ended(engine, downloads, insert(config, "tiny-org/Private"))
    assert private.status == "failed"
    assert "refused access to tiny-org/Private (401)" in (private.error or "")
    assert any(str(config.home.hf_token) in p for p in private.problems or [])


def test_offline_refuses_naming_what_to_copy_in(
    home: Path, setup: tuple[Config, Engine, Downloads], hub: HubServer
) -> None:
    config, engine, downloads = setup
    downloads.config = load_config(home, env={"HF_HUB_OFFLINE": "1"})
    done = until_ended(engine, downloads, insert(config, REPO))
    assert done.status == "failed" and "[hub] offline is set" in (done.error or "")
    assert any("copy the folder to" in p for p in done.problems or [])
    assert hub.requests == []  # not one request to the network


def test_cancel_stops_a_running_download_and_a_pending_one(
    setup: tuple[Config, Engine, Downloads], hub: HubServer
) -> None:
    config, engine, downloads = setup
    hub.bytes_per_second = 64 * 1024  # about 3 s for the weights
    running = insert(config, REPO)
    pending = insert(config, REPO, folder="Second")
    wait_for(lambda: (downloads.tick(), row(engine, running).bytes_done)[1], 20, what="bytes")
    update_all(config, "UPDATE model_downloads SET cancel_requested = TRUE")
    assert until_ended(engine, downloads, running).status == "cancelled"
    assert until_ended(engine, downloads, pending).status == "cancelled"
    assert not (config.home.base_models / "Tiny-Llama").exists()


def test_a_row_its_dead_process_left_running_goes_back_to_pending(
    setup: tuple[Config, Engine, Downloads],
) -> None:
    config, engine, downloads = setup
    dead = insert(config, REPO, status="running", host=config.catalog.host, pid=2**22 + 7)
    elsewhere = insert(config, REPO, status="running", host="other-host", pid=2**22 + 7)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = "2026-01-01T00:00:00.000000Z"  # a live pid whose row stopped beating: reused
        live = insert(config, REPO, status="running", host=config.catalog.host, pid=alive.pid)
        reused = insert(
            config,
            REPO,
            status="running",
            host=config.catalog.host,
            pid=alive.pid,
            heartbeat_at=stale,
        )
        assert downloads.recover() == 2
        assert row(engine, live).status == "running"  # a live `oneseekctl pull` keeps its own
        assert row(engine, reused).status == "pending"
    finally:
        alive.kill()
        alive.wait()
    assert row(engine, dead).status == "pending"
    assert row(engine, elsewhere).status == "running"  # another host's daemon resumes its own


def test_a_download_beats_and_reads_cancel_while_nothing_arrives(
    setup: tuple[Config, Engine, Downloads], monkeypatch: pytest.MonkeyPatch
) -> None:
    config, engine, downloads = setup
    monkeypatch.setattr(downloads_module, "BEAT_SECONDS", 0.05)
    row_id = insert(config, REPO)
    job = downloads.claim(row_id)
    assert job is not None
    claimed_at = row(engine, row_id).heartbeat_at
    done = threading.Event()
    beat = threading.Thread(target=downloads._beat, args=(job, done))
    beat.start()
    try:
        wait_for(lambda: row(engine, row_id).heartbeat_at != claimed_at, 10, what="a beat")
        update_all(config, "UPDATE model_downloads SET cancel_requested = TRUE")
        assert job.cancel.wait(10)
    finally:
        done.set()
        beat.join()


def test_progress_is_written_about_once_a_second(
    setup: tuple[Config, Engine, Downloads], hub: HubServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, engine, downloads = setup
    monkeypatch.setattr(downloads_module, "PROGRESS_SECONDS", 0.2)
    hub.bytes_per_second = 128 * 1024
    row_id = insert(config, REPO)

    def partway() -> ModelDownload | None:
        downloads.tick()
        r = row(engine, row_id)
        return r if r.bytes_done and r.bytes_done < (r.bytes_total or 0) else None

    r = wait_for(partway, 20, what="a download partway")
    assert r.status == "running" and r.commit == hub.repos[REPO].branches["main"]
    assert r.progress is not None and r.progress["file"] == "model.safetensors"
    assert r.progress["rate"] > 0 and r.heartbeat_at is not None
    hub.bytes_per_second = None
    assert until_ended(engine, downloads, row_id).status == "succeeded"
    assert downloads.job is None  # the thread has ended: nothing left running


def test_a_file_served_corrupted_fails_the_row_and_never_reaches_the_catalog(
    setup: tuple[Config, Engine, Downloads], hub: HubServer
) -> None:
    config, engine, downloads = setup
    hub.corrupt(REPO, "model.safetensors")
    done = until_ended(engine, downloads, insert(config, REPO))
    assert done.status == "failed"
    assert "model.safetensors arrived damaged: sha256" in (done.error or "")
    assert done.model_key is None
    assert not (config.home.base_models / "Tiny-Llama").exists()
    downloads.catalog.full_scan()  # not even a full scan finds a trace of it
    with read_session(engine) as session:
        assert session.scalars(select(BaseModel.key)).all() == []
        assert session.scalars(select(LedgerEvent)).all() == []


def test_a_revision_moved_after_pinning_still_installs_the_pinned_commit(
    setup: tuple[Config, Engine, Downloads], hub: HubServer
) -> None:
    config, engine, downloads = setup
    pinned = hub.repos[REPO].branches["main"]
    old = hub.repos[REPO].commits[pinned]
    hub.bytes_per_second = 64 * 1024
    row_id = insert(config, REPO)

    def underway() -> bool:
        downloads.tick()
        return bool(row(engine, row_id).commit)

    wait_for(underway, 20, what="the revision pinned")
    moved = hub.move(REPO, {**old, "config.json": b'{"model_type": "llama", "moved": true}'})
    hub.bytes_per_second = None
    done = until_ended(engine, downloads, row_id)
    assert (done.status, done.commit) == ("succeeded", pinned) and moved != pinned
    installed = config.home.base_models / "Tiny-Llama" / "config.json"
    assert installed.read_bytes() == old["config.json"]


def test_a_disk_without_room_fails_the_row_with_the_numbers(
    setup: tuple[Config, Engine, Downloads], hub: HubServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, engine, downloads = setup
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(2**30, 2**30 - 2**20, 2**20))
    done = until_ended(engine, downloads, insert(config, REPO))
    assert done.status == "failed"
    assert f"not enough disk space for {REPO}" in (done.error or "")
    assert "1.0 MiB free" in (done.error or "")
    assert "model.safetensors" not in hub.served_bytes  # refused before the first byte


def test_a_download_killed_just_after_its_rename_ends_succeeded_with_the_hub_unreachable(
    home: Path,
    setup: tuple[Config, Engine, Downloads],
    hub: HubServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The folder in base_models/ holds the commit the row pinned: it is the row's own, and
    the restart ends the row without asking the Hub again (which may be gone by then)."""
    config, engine, downloads = setup
    monkeypatch.setattr(downloads_module, "ATTEMPTS", 1)
    row_id = insert(config, REPO)
    assert until_ended(engine, downloads, row_id).status == "succeeded"
    commit = hub.repos[REPO].branches["main"]
    # as a SIGKILL right after the rename leaves it: running, its process gone, not ended
    update_all(
        config,
        f"UPDATE model_downloads SET status = 'running', pid = {2**22 + 7}, "
        "finished_at = NULL, model_key = NULL",
    )
    (home / "oneseekd.toml").write_text('[hub]\nendpoint = "http://127.0.0.1:9"\n')
    downloads.config = load_config(home, config.db_url, env={})  # nothing listens on port 9
    asked = len(hub.requests)
    assert downloads.recover() == 1
    done = until_ended(engine, downloads, row_id)
    assert (done.status, done.commit, done.model_key, done.error) == (
        "succeeded",
        commit,
        "tiny-llama",
        None,
    )
    assert len(hub.requests) == asked
