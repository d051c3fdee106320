"""Requests that name a Hub repository in base_models (`hf:ORG/NAME[@REV]`, issue 28), decided
in this process by the daemon's own parts (Intake, the drop folder, the rows door, Downloads)
against a Hub on loopback (tests/hubserver.py): the request waits for the download and is
queued once the model is `ready`, or refused with the download's reason; a model already on
the box is never downloaded again. The homes use the fake trainer's fake models."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from daemon import DaemonProcess, query, run_state, wait_for
from homes import ctl, drop, request, training_home
from hubserver import HubServer
from modelfactory import make_model
from sqlalchemy import Engine

from oneseekd.catalog.live import Catalog
from oneseekd.catalog.scan import model_roots
from oneseekd.certify.ledger import Ledger
from oneseekd.config import Config, load_config
from oneseekd.db.engine import make_engine
from oneseekd.db.migrate import upgrade
from oneseekd.hub.downloads import Downloads
from oneseekd.intake.accept import Intake
from oneseekd.intake.dropfolder import DropFolder
from oneseekd.intake.incoming import Verdict
from oneseekd.intake.rows import PendingRows

REPO = "tiny-org/Tiny-Llama"
HF = f"hf:{REPO}"


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubServer]:
    server = HubServer()
    folder = make_model(tmp_path / "built", "Tiny-Llama")
    server.add(REPO, {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()})
    with server.running():
        yield server


@dataclass
class Parts:
    """The daemon's parts on one home, as its loop drives them."""

    config: Config
    engine: Engine
    intake: Intake
    drops: DropFolder
    rows: PendingRows
    downloads: Downloads

    def turn(self) -> None:
        """One turn of the daemon's loop: the doors, then the downloads."""
        self.drops.poll()
        self.rows.database_changed()  # as the loop's probe would say after any commit
        self.rows.poll()
        self.downloads._last_look = float("-inf")
        self.downloads.tick()

    def until(self, sql: str, *args: object, timeout: float = 30) -> list[tuple[object, ...]]:
        """Turn the loop until `sql` returns a row."""

        def done() -> list[tuple[object, ...]]:
            self.turn()
            return rows(self.config.home.root, sql, *args)

        return wait_for(done, timeout, what=sql)

    def close(self) -> None:
        self.downloads.shutdown()
        self.engine.dispose()


def open_parts(home: Path, hub: HubServer) -> Parts:
    with (home / "oneseekd.toml").open("a") as f:
        f.write(f'[hub]\nendpoint = "{hub.endpoint}"\n')
    config = load_config(home, env={})
    config.home.ensure()
    engine = make_engine(config.db_url)
    upgrade(engine)
    catalog = Catalog(engine, model_roots(config), 0.0, host=config.catalog.host)
    catalog.full_scan()
    ledger = Ledger.for_home(engine, config.home)
    intake = Intake(
        engine, config.home, ledger=ledger, host=config.catalog.host, roots=model_roots(config)
    )
    downloads = Downloads(engine, config, ledger=ledger, catalog=catalog)
    return Parts(
        config,
        engine,
        intake,
        DropFolder(intake, config.home, 0.0),
        PendingRows(intake, engine),
        downloads,
    )


@pytest.fixture
def parts(tmp_path: Path, hub: HubServer) -> Iterator[Parts]:
    opened = open_parts(training_home(tmp_path / "home"), hub)
    yield opened
    opened.close()


def rows(home: Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    con = sqlite3.connect(home / "oneseek.db", timeout=30)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def insert_request(home: Path, body: object) -> int:
    """The admin panel's door: one INSERT of a payload from a plain sqlite3 connection."""
    con = sqlite3.connect(home / "oneseek.db", timeout=30)
    cur = con.execute("INSERT INTO training_requests (payload) VALUES (?)", (json.dumps(body),))
    con.commit()
    con.close()
    assert cur.lastrowid is not None
    return cur.lastrowid


def submit(parts: Parts, body: object) -> Verdict:
    return parts.intake.take_bytes(json.dumps(body).encode(), source="submit")


def test_an_inserted_row_naming_hf_waits_for_its_download_then_is_queued(
    parts: Parts, hub: HubServer
) -> None:
    home = parts.config.home.root
    row_id = insert_request(home, request(base_models=[HF]))
    parts.rows.database_changed()
    parts.rows.poll()
    [(status, download_id, decided)] = rows(
        home, "SELECT status, download_id, decided_at FROM training_requests"
    )
    assert (status, decided) == ("pending", None)  # no verdict yet: it waits
    [(download, source, repository, revision)] = rows(
        home, "SELECT id, source, repository, revision FROM model_downloads"
    )
    assert (download, source, repository, revision) == (download_id, "request", REPO, "main")
    listed = ctl(home, "requests", "--json")
    assert listed.exit_code == 0, listed.output
    [shown] = json.loads(listed.stdout)
    assert shown["status"] == "pending"
    assert shown["waiting_for"].startswith(f"download-{download} ({REPO})")
    parts.rows.database_changed()
    parts.rows.poll()  # decided again only once the download has ended
    assert rows(home, "SELECT COUNT(*) FROM model_downloads") == [(1,)]
    [(run_pk,)] = parts.until("SELECT run_id FROM training_requests WHERE status = 'queued'")
    [(models, fingerprints)] = rows(
        home, "SELECT base_models, fingerprints FROM runs WHERE id = ?", run_pk
    )
    assert json.loads(str(models)) == ["tiny-llama"]
    assert json.loads(str(fingerprints))["tiny-llama"]  # the catalog's, as for any model
    assert rows(home, "SELECT status FROM model_downloads") == [("succeeded",)]
    assert rows(home, "SELECT id FROM training_requests") == [(row_id,)]


def test_a_dropped_file_naming_hf_stays_claimed_until_its_run_is_queued(
    parts: Parts, hub: HubServer
) -> None:
    home = parts.config.home.root
    hub.bytes_per_second = 64 * 1024  # the download takes a few turns
    drop(home, "pulled.json", request(base_models=[f"hf:{REPO}@main"]))
    parts.drops.poll()
    assert [p.name.split("__")[1] for p in (home / "requests" / ".claimed").iterdir()] == [
        "pulled.json"
    ]
    parts.drops.poll()  # a waiting file is neither taken again nor moved
    assert rows(home, "SELECT COUNT(*), status FROM training_requests") == [(1, "pending")]
    parts.until("SELECT 1 FROM training_requests WHERE status = 'queued'")
    parts.drops.poll()
    assert (home / "requests" / "accepted" / "pulled.json").is_file()
    assert list((home / "requests" / ".claimed").iterdir()) == []
    [(source, claim)] = rows(home, "SELECT source, claim FROM training_requests")
    assert source == "file" and claim  # decided again as the file it came as


@pytest.mark.parametrize("failure", ["404", "corrupted"])
def test_a_failed_download_rejects_the_request_with_its_reason(
    parts: Parts, hub: HubServer, failure: str
) -> None:
    home = parts.config.home.root
    name = "hf:tiny-org/Nowhere" if failure == "404" else HF
    if failure == "corrupted":
        hub.corrupt(REPO, "model.safetensors")
    drop(home, "doomed.json", request(base_models=[name]))
    parts.until("SELECT 1 FROM training_requests WHERE status = 'rejected'")
    [(problems,)] = rows(home, "SELECT problems FROM training_requests")
    [problem] = json.loads(str(problems))
    expected = "no repository tiny-org/Nowhere" if failure == "404" else "arrived damaged"
    assert problem.startswith(f"base_models: {name.removesuffix('@main')}: download-1 of ")
    assert " failed: " in problem and expected in problem
    parts.drops.poll()
    error = json.loads((home / "requests" / "rejected" / "doomed.error.json").read_text())
    assert expected in json.dumps(error)
    assert rows(home, "SELECT COUNT(*) FROM runs") == [(0,)]


def test_a_request_refused_for_another_reason_downloads_nothing(
    parts: Parts, hub: HubServer
) -> None:
    verdict = submit(parts, request(base_models=[HF], dataset="nowhere.jsonl"))
    assert verdict.status == "rejected"
    assert any("dataset 'nowhere.jsonl' does not exist" in p for p in verdict.problems)
    assert rows(parts.config.home.root, "SELECT COUNT(*) FROM model_downloads") == [(0,)]
    bad = submit(parts, request(base_models=["hf:not a repo"]))
    assert bad.status == "rejected" and "is not a Hub repository id" in bad.problems[0]
    assert hub.requests == []


def test_a_model_already_pulled_or_copied_in_is_never_downloaded_again(
    parts: Parts, hub: HubServer
) -> None:
    home = parts.config.home.root
    first = submit(parts, request(base_models=[HF], version="1.0"))
    assert first.status == "waiting" and first.download == 1
    parts.until("SELECT 1 FROM training_requests WHERE status = 'queued'")
    asked = list(hub.requests)
    commit = hub.repos[REPO].branches["main"]
    for name in (HF, f"{HF}@{commit}", f"HF:{REPO.upper()}"):
        again = submit(parts, request(base_models=[name], request_id=name))
        assert again.status == "queued", (name, again.problems)
    # a folder copied in by hand, named as the repository: its key is the model
    copied = submit(parts, request(base_models=["hf:AI-Sweden/KB-Llama-3.1-8B-Swedish"]))
    assert copied.status == "queued", copied.problems
    assert hub.requests == asked  # not one more request to the Hub
    assert rows(home, "SELECT COUNT(*) FROM model_downloads") == [(1,)]
    assert rows(home, "SELECT base_models FROM runs ORDER BY id") == [
        ('["tiny-llama"]',),
        ('["tiny-llama"]',),
        ('["tiny-llama"]',),
        ('["tiny-llama"]',),
        ('["kb-llama-3-1-8b-swedish"]',),
    ]


def test_two_requests_for_one_repository_share_its_download(parts: Parts, hub: HubServer) -> None:
    home = parts.config.home.root
    hub.bytes_per_second = 64 * 1024
    one = submit(parts, request(base_models=[HF], request_id="one"))
    two = submit(parts, request(base_models=[HF, "Qwen-2.5-7B"], request_id="two"))
    assert (one.status, two.status, one.download) == ("waiting", "waiting", two.download)
    parts.until(
        "SELECT COUNT(*) FROM training_requests WHERE status = 'queued' HAVING COUNT(*) = 2"
    )
    assert rows(home, "SELECT COUNT(*) FROM model_downloads") == [(1,)]


def test_submit_says_what_it_waits_for(parts: Parts, hub: HubServer) -> None:
    home = parts.config.home.root
    done = ctl(home, "submit", "--base-models", HF, "--dataset", "civic.jsonl")
    assert done.exit_code == 0, done.output
    assert done.output.startswith(f"Waiting for download-1 ({REPO}) (request #1)")
    listed = ctl(home, "requests")
    assert f"waiting for download-1 ({REPO}), pending" in listed.output


def daemon_home(tmp_path: Path) -> Path:
    home = training_home(tmp_path / "home")
    assert ctl(home, "db", "upgrade").exit_code == 0
    return home


def test_a_daemon_killed_while_a_request_waits_goes_on_at_its_restart(
    tmp_path: Path, hub: HubServer
) -> None:
    """Both the waiting request and its download are rows: a SIGKILL loses neither."""
    home = daemon_home(tmp_path)
    env = {"HF_ENDPOINT": hub.endpoint}
    hub.hold_after(REPO, "model.safetensors", 4096)
    first = DaemonProcess(home, env=env)
    try:
        first.wait_event("daemon_ready")
        drop(home, "pulled.json", request(base_models=[HF]))
        assert first.wait_event("request_waiting")["download"] == 1
        assert hub.holding.wait(20)
    finally:
        first.kill()
    assert query(home, "SELECT status FROM training_requests") == [("pending",)]
    hub.release()
    second = DaemonProcess(home, env=env)
    try:
        run_id = second.wait_event("request_accepted", timeout=30)["run_id"]
        wait_for(lambda: run_state(home, run_id) == "succeeded", 30, what="the run")
        wait_for(lambda: (home / "requests" / "accepted" / "pulled.json").is_file(), 10)
    finally:
        second.kill()
    assert query(home, "SELECT status, source FROM model_downloads") == [("succeeded", "request")]


def test_train_with_an_hf_base_model_follows_the_download_then_the_run(
    tmp_path: Path, hub: HubServer
) -> None:
    home = daemon_home(tmp_path)
    hub.bytes_per_second = 256 * 1024  # a few progress lines
    daemon = DaemonProcess(home, env={"HF_ENDPOINT": hub.endpoint})
    try:
        daemon.wait_event("daemon_ready")
        done = ctl(home, "train", "--base-models", HF, "--dataset", "civic.jsonl")
    finally:
        daemon.kill()
    assert done.exit_code == 0, done.output
    lines = done.stdout.splitlines()
    assert lines[0] == f"Waiting for download-1 ({REPO}) (request #1)"
    queued = next(i for i, line in enumerate(lines) if line.startswith("Queued as run "))
    assert any(line.startswith(f"download-1 {REPO}: ") for line in lines[1:queued])
    assert lines[-1].startswith("DNA: ")


def test_a_withdrawn_request_stays_refused_when_its_download_ends(
    parts: Parts, hub: HubServer
) -> None:
    """`train`'s stop while it waits: the request is refused at once, the download goes on
    (for a later request), and its end decides nothing again."""
    home = parts.config.home.root
    waiting = submit(parts, request(base_models=[HF]))
    assert parts.intake.withdraw(waiting.request_pk, "withdrawn by a test")
    assert not parts.intake.withdraw(waiting.request_pk, "twice")  # decided already
    parts.until("SELECT 1 FROM model_downloads WHERE status = 'succeeded'")
    parts.turn()
    assert rows(home, "SELECT status, problems FROM training_requests") == [
        ("rejected", '["withdrawn by a test"]')
    ]
    assert rows(home, "SELECT COUNT(*) FROM runs") == [(0,)]
