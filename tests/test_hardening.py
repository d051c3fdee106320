"""Issue 17: one bad file never stops the daemon, a planned stop never loses a run, and the
ledger proves its own completeness. Each test reproduces one finding of the issue."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

import pytest
from daemon import DaemonProcess, query, run_until_idle, wait_for
from homes import ctl, fake_behaviour, open_home, request, training_home
from modelfactory import make_model
from sqlalchemy import Engine, event
from world import World, close

from oneseekd.catalog.scan import model_roots, scan
from oneseekd.intake.accept import Intake
from oneseekd.intake.dropfolder import DropFolder
from oneseekd.intake.placing import short_name


# --- item 5: attempts count failures, not stops ----------------------------------------------
def test_planned_stops_are_not_failed_attempts(tmp_path: Path) -> None:
    w = World(tmp_path / "home")
    try:
        run_id = w.submit("1.0", sleep=60)
        for _ in range(4):  # one more stop than trainer.max_attempts = 3
            w.drive(lambda: w.started(run_id))
            w.supervisor.shutdown()  # systemctl stop: the trainer checkpoints and exits 75
            assert w.run(run_id)["state"] == "running"
            (w.home / "fake" / f"started-{run_id}").unlink()
            w.restart()
        fake_behaviour(w.home, "1.0", sleep=0.05)
        w.supervisor.shutdown()
        w.restart()
        w.drive(lambda: w.finished(run_id))
        run = w.run(run_id)
        assert (run["state"], run["attempts"]) == ("succeeded", 6), run["error"]
    finally:
        close(w)


def test_a_run_that_crashed_too_often_says_which_attempts_failed_how(tmp_path: Path) -> None:
    w = World(tmp_path / "home")
    try:
        run_id = w.submit("1.0", sleep=60)
        w.drive(lambda: w.started(run_id))
        w.supervisor.shutdown()  # attempt 1: a planned stop, not counted
        for _ in range(3):  # attempts 2-4: the daemon dies; its trainer is left behind
            (w.home / "fake" / f"started-{run_id}").unlink(missing_ok=True)
            w.restart()
            w.drive(lambda: w.started(run_id))
            assert w.supervisor.child is not None
            w.supervisor.child.proc.kill()
            w.supervisor.child.proc.wait()
            w.supervisor.child = None  # as if the daemon died with it
        w.restart()
        assert w.lost(run_id).startswith(
            "the trainer failed 3 times (trainer.max_attempts = 3): attempts 2, 3 and 4 ended "
            "without a checkpointed stop (the trainer or its daemon was killed or crashed); "
            "1 stop the daemon asked for is not counted; see "
        )
    finally:
        close(w)


# --- item 1: one bad input never stalls the rest ----------------------------------------------
def write_request(folder: Path, name: str, body: bytes) -> None:
    tmp = folder / ".writing.tmp"
    tmp.write_bytes(body)
    os.rename(tmp, folder / name)


def test_request_files_with_names_too_long_to_claim_are_taken_in(tmp_path: Path) -> None:
    home = training_home(tmp_path / "home")
    requests = home / "requests"
    requests.mkdir()
    accepted_name = "a" * 245 + ".json"  # 250 characters: its claimed name would be 268
    rejected_name = "r" * 232 + ".json"  # 237: NAME.error.json's temporary name would be 263
    write_request(requests, accepted_name, json.dumps(request()).encode())
    write_request(requests, rejected_name, b"{not json")
    con = sqlite3.connect(home / "oneseek.db")
    con.close()
    done = run_until_idle(home, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in (requests / "accepted").iterdir()) == [short_name(accepted_name)]
    rejected = requests / "rejected"
    short = short_name(rejected_name)
    assert sorted(p.name for p in rejected.iterdir()) == sorted(
        [short, short.removesuffix(".json") + ".error.json"]
    )
    error = json.loads((rejected / (short.removesuffix(".json") + ".error.json")).read_text())
    assert error["file"] == rejected_name
    names = {
        row[0]: row[1] for row in query(home, "SELECT source_name, status FROM training_requests")
    }
    assert names == {accepted_name: "queued", rejected_name: "rejected"}


def test_a_start_finishes_a_claimed_file_whose_error_name_is_too_long(tmp_path: Path) -> None:
    home = training_home(tmp_path / "home")
    claimed = home / "requests" / ".claimed"
    claimed.mkdir(parents=True)
    name = "r" * 232 + ".json"
    (claimed / f"{'0' * 16}__{name}").write_bytes(b"{not json")  # 255 bytes: the most allowed
    done = run_until_idle(home, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    short = short_name(name)
    assert (home / "requests" / "rejected" / short).is_file()
    assert list(claimed.iterdir()) == []


def test_a_request_file_dated_in_the_future_is_taken_in_after_the_settle_time(
    tmp_path: Path,
) -> None:
    config, engine = open_home(training_home(tmp_path / "home"))
    try:
        now = [time.time()]
        drops = DropFolder(Intake(engine, config.home), config.home, 5.0, clock=lambda: now[0])
        config.home.requests.mkdir(exist_ok=True)
        write_request(config.home.requests, "future.json", json.dumps(request()).encode())
        in_2100 = 4102444800.0
        os.utime(config.home.requests / "future.json", (in_2100, in_2100))
        assert drops.poll() == 0  # first seen now
        now[0] += 4.9
        assert drops.poll() == 0
        now[0] += 0.2
        assert drops.poll() == 1
        assert (config.home.requests / "accepted" / "future.json").is_file()
    finally:
        engine.dispose()


def test_a_file_that_cannot_be_claimed_is_refused_once_with_its_reason(tmp_path: Path) -> None:
    config, engine = open_home(training_home(tmp_path / "home"))
    try:
        requests = config.home.requests
        (requests / ".claimed").write_text("not a folder")  # every claim (rename) now fails
        write_request(requests, "stuck.json", json.dumps(request()).encode())
        drops = DropFolder(Intake(engine, config.home), config.home, 0.0)
        assert drops.poll() == 1
        assert drops.poll() == 0  # never retried while the file is unchanged
        assert drops.waiting() == 0  # so --exit-when-idle is not held up by it
        assert query(
            config.home.root, "SELECT source_name, status, error FROM training_requests"
        ) == [
            (
                "stuck.json",
                "rejected",
                "the request file cannot be claimed (renamed into requests/.claimed/): File "
                "exists; move the file out of requests/ and drop it again",
            )
        ]
        assert (requests / "stuck.json").is_file()  # nothing lost
    finally:
        engine.dispose()


def test_an_unreadable_requests_folder_leaves_the_row_door_and_the_queue_serving(
    tmp_path: Path,
) -> None:
    home = training_home(tmp_path / "home")
    daemon = DaemonProcess(home)
    try:
        daemon.wait_event("daemon_ready", timeout=60)
        requests = home / "requests"
        os.rename(requests, home / "requests.away")
        os.symlink("requests", requests)  # a link to itself: every listing fails with ELOOP
        con = sqlite3.connect(home / "oneseek.db", timeout=30)
        with con:
            con.execute(
                "INSERT INTO training_requests (payload, status, source, created_at) "
                "VALUES (?, 'pending', 'database', '2026-01-01T00:00:00.000000Z')",
                (json.dumps(request()),),
            )
        con.close()

        def finished() -> bool:
            rows = query(home, "SELECT state FROM runs")
            return rows == [("succeeded",)]

        wait_for(finished, timeout=60, what="the row's run to finish")
        unreadable = [e for e in daemon.events() if e.get("event") == "requests_folder_unreadable"]
        assert len(unreadable) == 1  # logged once, not once a tick
        assert unreadable[0]["error"] == "Too many levels of symbolic links"
        os.unlink(requests)
        os.rename(home / "requests.away", requests)
        daemon.wait_event("requests_folder_readable", timeout=30)
    finally:
        assert daemon.stop() == 0


def bad_models(base: Path) -> None:
    """A folder that is a link loop, one holding a loop, a config nested 200k levels deep (far
    under the 4 MB cap) and a shard index of 20 MB (sparse)."""
    (base / "Loop").symlink_to("Loop")
    make_model(base, "Holds-Loop")
    (base / "Holds-Loop" / "spin").symlink_to("spin")
    make_model(base, "Deep-Config")
    (base / "Deep-Config" / "config.json").write_bytes(b"[" * 200_000 + b"]" * 200_000)
    make_model(base, "Huge-Index")
    with (base / "Huge-Index" / "model.safetensors.index.json").open("wb") as fh:
        fh.truncate(20 * 1024 * 1024)


BAD_REASONS = {
    "deep-config": "config.json nests more than 64 levels deep; at most 64 are read",
    "holds-loop": "spin is a symbolic link loop; fix the link or remove it",
    "huge-index": "model.safetensors.index.json is 20971520 bytes; a shard index is far below "
    "16777216",
    "loop": "the folder is a symbolic link loop; point the link at a model folder or remove it",
}


def test_the_scan_marks_link_loops_deep_and_huge_json_invalid_with_the_reason(
    tmp_path: Path,
) -> None:
    home = training_home(tmp_path / "home")
    bad_models(home / "models" / "oneseek-7b-zero" / "base_models")
    config, engine = open_home(home)  # a full scan, as the daemon's start does
    engine.dispose()
    found = scan(model_roots(config)).models
    assert {k: (f.state, f.reason) for k, f in found.items() if k in BAD_REASONS} == {
        k: ("invalid", reason) for k, reason in BAD_REASONS.items()
    }
    shown = ctl(home, "models", "--json")
    assert shown.exit_code == 0, shown.output
    listed = {m["key"]: (m["state"], m["state_reason"]) for m in json.loads(shown.stdout)}
    assert {k: v for k, v in listed.items() if k in BAD_REASONS} == {
        k: ("invalid", reason) for k, reason in BAD_REASONS.items()
    }
    done = run_until_idle(home, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]


# --- item 2: the database file under the daemon ------------------------------------------------
@pytest.mark.parametrize("how", ["deleted", "truncated"])
def test_the_daemon_stops_taking_requests_when_its_database_file_goes(
    tmp_path: Path, how: str
) -> None:
    home = training_home(tmp_path / "home")
    daemon = DaemonProcess(home)
    db = home / "oneseek.db"
    try:
        daemon.wait_event("daemon_ready", timeout=60)
        if how == "deleted":
            for suffix in ("", "-wal", "-shm"):
                Path(f"{db}{suffix}").unlink(missing_ok=True)
        else:
            os.truncate(db, 0)
        write_request(home / "requests", "late.json", json.dumps(request()).encode())
        assert daemon.proc.wait(timeout=60) == 76
    finally:
        daemon.kill()
    changed = [e for e in daemon.events() if e.get("event") == "database_file_changed"]
    # a deleted file may be seen as replaced: a connection the pool opens in between creates
    # a new, empty file at the path (either way nothing more is taken into it)
    expected = (
        {"was deleted", "was replaced by another file"}
        if how == "deleted"
        else {"was truncated to 0 bytes"}
    )
    assert changed and changed[0]["error"] in {f"the database file {db} {e}" for e in expected}
    assert not (home / "requests" / "accepted" / "late.json").exists()
    # the next start, on the file now at the path, takes the request in there
    done = run_until_idle(home, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (home / "requests" / "accepted" / "late.json").is_file()
    assert query(home, "SELECT source_name, status FROM training_requests") == [
        ("late.json", "queued")
    ]


# --- item 3: the trainer checks again what intake checked --------------------------------------
def test_a_dataset_swapped_for_a_link_out_of_datasets_fails_the_run(tmp_path: Path) -> None:
    from oneseekd.trainer.context import RunRefused, load_context

    config, engine = open_home(training_home(tmp_path / "home"))
    try:
        verdict = Intake(engine, config.home).take_bytes(
            json.dumps(request()).encode(), source="submit"
        )
        assert verdict.run_id is not None
        outside = tmp_path / "outside.jsonl"
        outside.write_text('{"text": "not the home\'s data"}\n')
        dataset = config.home.datasets / "civic.jsonl"
        dataset.unlink()
        dataset.symlink_to(outside)
        with pytest.raises(RunRefused) as refused:
            load_context(engine, config.home, verdict.run_id)
        assert str(refused.value) == (
            f"run {verdict.run_id} cannot train\n"
            f"  - dataset 'civic.jsonl' is a link leading outside {config.home.datasets}/; put "
            f"the file under {config.home.datasets}/ and name it relative to that folder"
        )
    finally:
        engine.dispose()


# --- item 6: the command line ------------------------------------------------------------------
def test_a_home_that_does_not_exist_is_an_error_naming_it(tmp_path: Path) -> None:
    typo = tmp_path / "hmoe"
    result = ctl(typo, "status")
    assert result.exit_code == 78
    assert result.stderr == (
        f"Error: the home {typo} does not exist\n"
        "  - check --home / ONESEEK_HOME for a typo\n"
        f"  - to make a new home there, run `oneseekd --home {typo}` or "
        f"`oneseekctl --home {typo} db upgrade`\n"
    )
    assert not typo.exists()
    assert ctl(typo, "db", "upgrade").exit_code == 0  # the one command that makes a home
    assert (typo / "oneseek.db").is_file()


@pytest.fixture
def sqlite_pragma() -> object:
    """Every new SQLite connection in this process runs the pragma the test sets: a real
    SQLite limit (query_only, max_page_count) standing in for a read-only file or a full disk."""
    pragma: list[str] = []

    def on_connect(dbapi_conn: object, _record: object) -> None:
        if pragma:
            dbapi_conn.execute(pragma[0])  # type: ignore[attr-defined]

    event.listen(Engine, "connect", on_connect)
    yield pragma
    event.remove(Engine, "connect", on_connect)


def test_a_read_only_database_is_an_error_line_with_the_fix(
    tmp_path: Path, sqlite_pragma: list[str]
) -> None:
    home = training_home(tmp_path / "home")
    assert ctl(home, "db", "upgrade").exit_code == 0
    sqlite_pragma.append("PRAGMA query_only = ON")
    db = home / "oneseek.db"
    for args in (["status"], ["submit", "--base-models", "kb-llama", "--dataset", "civic.jsonl"]):
        result = ctl(home, *args)
        assert result.exit_code == 3, result.output
        assert result.stderr == (
            f"Error: the database {db} is read-only (attempt to write a readonly database)\n"
            f"  - give this user write permission on {db} and its folder (SQLite also writes "
            "oneseek.db-wal and oneseek.db-shm beside it), or run oneseekctl as the daemon's "
            "user\n"
        )
    verified = ctl(home, "ledger", "verify")
    assert (verified.exit_code, verified.stdout) == (
        0,
        "Ledger OK: 0 events, 0 artifacts verified.\n",
    )


def test_submit_on_a_full_disk_is_an_error_line_with_the_fix(
    tmp_path: Path, sqlite_pragma: list[str]
) -> None:
    home = training_home(tmp_path / "home")
    assert ctl(home, "db", "upgrade").exit_code == 0  # the database made
    assert ctl(home, "status").exit_code == 0  # and the catalog scanned
    (pages,) = sqlite3.connect(home / "oneseek.db").execute("PRAGMA page_count").fetchone()
    sqlite_pragma.append(f"PRAGMA max_page_count = {pages}")  # not one page more: full
    big = home / "big.json"  # its row needs new pages, whatever its verdict
    big.write_text(json.dumps({**request(), "notes": "x" * 100_000}))
    result = ctl(home, "submit", str(big))
    db = home / "oneseek.db"
    assert result.exit_code == 3, result.output
    assert result.stderr == (
        f"Error: the database {db} cannot be written: the disk is full (database or disk is "
        "full)\n"
        f"  - free space on the file system that holds {db}, then run the command again\n"
    )


def test_status_without_a_daemon_shows_the_run_waiting_not_live(tmp_path: Path) -> None:
    w = World(tmp_path / "home")
    try:
        run_id = w.submit("1.0", sleep=60)
        w.drive(lambda: w.started(run_id))
        w.db.execute(
            "UPDATE runs SET progress = ? WHERE run_id = ?",
            json.dumps({"model": "kb-llama-3-1-8b-swedish", "step": 5, "steps": 10}),
            run_id,
        )
        w.supervisor.shutdown()
        result = ctl(w.home, "status")
        assert result.exit_code == 0, result.output
        lines = result.stdout.splitlines()
        assert not any(line.startswith("running:") or "[" in line for line in lines)
        assert (
            f"waiting:  {run_id} v1.0 (kb-llama-3-1-8b-swedish), attempt 1: the daemon is "
            "down; the run resumes from its last checkpoint when oneseekd starts"
        ) in lines
    finally:
        close(w)


# --- item 4: a ledger that proves its completeness and its key ---------------------------------
def ledger_home(tmp_path: Path) -> Path:
    """A home with two ledger events (an accepted and a rejected request)."""
    home = training_home(tmp_path / "home")
    assert (
        ctl(home, "submit", "--base-models", "kb-llama", "--dataset", "civic.jsonl").exit_code == 0
    )
    assert ctl(home, "submit", "--base-models", "falcon", "--dataset", "civic.jsonl").exit_code == 1
    return home


def verify_problems(home: Path) -> list[str]:
    result = ctl(home, "ledger", "verify", "--json")
    report = json.loads(result.stdout)
    assert result.exit_code == (0 if report["ok"] else 1)
    return list(report["problems"])


def tamper(home: Path, sql: str, *args: object) -> None:
    con = sqlite3.connect(home / "oneseek.db", isolation_level=None)
    try:
        con.execute(sql, args)
    finally:
        con.close()


def test_a_deleted_last_ledger_row_is_caught_by_the_anchored_tip(tmp_path: Path) -> None:
    home = ledger_home(tmp_path)
    assert verify_problems(home) == []
    tamper(home, "DELETE FROM ledger_events WHERE seq = 2")
    assert verify_problems(home) == [
        "ledger.tip anchors ledger event #2, but the ledger ends at #1: the events after #1 "
        "were deleted"
    ]


def test_an_emptied_ledger_is_caught_by_the_anchored_tip(tmp_path: Path) -> None:
    home = ledger_home(tmp_path)
    tamper(home, "DELETE FROM ledger_events")
    assert verify_problems(home) == [
        "ledger.tip anchors ledger event #2, but the ledger is empty: its events were deleted"
    ]


def resign(home: Path, key: object, seq: int, payload: dict[str, object]) -> str:
    """Rewrite event `seq` with payload, hashed and signed with `key` (an attacker's)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from oneseekd.certify.keys import key_id_of
    from oneseekd.certify.ledger import canonical_json, event_hash

    assert isinstance(key, Ed25519PrivateKey)  # another implementation than the ledger's
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    key_id = key_id_of(raw)
    con = sqlite3.connect(home / "oneseek.db", isolation_level=None)
    try:
        con.execute(
            "INSERT OR IGNORE INTO ledger_keys (key_id, algorithm, public_key, created_at) "
            "VALUES (?, 'ed25519', ?, '2026-01-01T00:00:00.000000Z')",
            (key_id, raw.hex()),
        )
        at, event, run_pk = con.execute(
            "SELECT at, event, run_id FROM ledger_events WHERE seq = ?", (seq,)
        ).fetchone()
        before = con.execute("SELECT hash FROM ledger_events WHERE seq = ?", (seq - 1,)).fetchone()
        prev = before[0] if before else "0" * 64  # chained anew, as a forger would
        digest = event_hash(seq, at, event, run_pk, payload, prev, key_id)
        con.execute(
            "UPDATE ledger_events SET payload = ?, prev_hash = ?, hash = ?, key_id = ?, "
            "signature = ? WHERE seq = ?",
            (
                canonical_json(payload).decode(),
                prev,
                digest,
                key_id,
                key.sign(bytes.fromhex(digest)).hex(),
                seq,
            ),
        )
    finally:
        con.close()
    return key_id


def test_an_attackers_key_in_the_keys_table_is_not_trusted(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    home = ledger_home(tmp_path)
    (payload,) = query(home, "SELECT payload FROM ledger_events WHERE seq = 2")[0]
    forged = {**json.loads(payload), "problems": ["nothing to see"]}
    attacker = resign(home, Ed25519PrivateKey.generate(), 2, forged)
    (tip_hash,) = query(home, "SELECT hash FROM ledger_events WHERE seq = 2")[0]
    anchored = json.loads((home / "ledger.tip").read_text())["hash"]
    assert verify_problems(home) == [
        f"ledger event #2 (request_rejected) is signed by key {attacker[:16]}, which is not "
        "pinned in keys/trusted_keys",
        f"ledger.tip anchors ledger event #2 with hash {anchored[:16]}, but the ledger's #2 "
        f"has hash {tip_hash[:16]}: the chain was rewritten",
    ]


def test_a_replaced_key_file_stops_the_daemon_and_its_signatures_do_not_verify(
    tmp_path: Path,
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    home = ledger_home(tmp_path)
    pinned = json.loads((home / "ledger.tip").read_text())["key_id"]
    key_file = home / "keys" / "ledger_ed25519.pem"
    new = Ed25519PrivateKey.generate()
    key_file.write_bytes(
        new.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    # the whole chain re-signed with the new key
    for seq, payload in query(home, "SELECT seq, payload FROM ledger_events ORDER BY seq"):
        attacker = resign(home, new, seq, json.loads(payload))
    done = run_until_idle(home, timeout=60)
    assert done.returncode == 1
    assert (
        f"Error: the ledger signing key {key_file} (key {attacker[:16]}) is not the key pinned "
        f"in {home / 'keys' / 'oneseekd.pub'} (key {pinned[:16]}): the key file was replaced\n"
        f"  - restore {key_file} from a backup; nothing signed with another key verifies\n"
        f"  - to sign with a new key on purpose, move {home / 'keys' / 'oneseekd.pub'} away: the "
        "next start pins the new key, and keys/trusted_keys keeps the old one for the events "
        "it signed\n"
    ) in done.stderr
    problems = verify_problems(home)
    assert problems[:2] == [
        f"ledger event #1 (request_accepted) is signed by key {attacker[:16]}, which is not "
        "pinned in keys/trusted_keys",
        f"ledger event #2 (request_rejected) is signed by key {attacker[:16]}, which is not "
        "pinned in keys/trusted_keys",
    ]


def test_ledger_tip_prints_the_anchor_for_a_witness(tmp_path: Path) -> None:
    home = ledger_home(tmp_path)
    (seq, digest, signature, key_id) = query(
        home, "SELECT seq, hash, signature, key_id FROM ledger_events ORDER BY seq DESC LIMIT 1"
    )[0]
    result = ctl(home, "ledger", "tip", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["seq"], data["hash"], data["signature"], data["key_id"]) == (
        seq,
        digest,
        signature,
        key_id,
    )
    assert data["pinned_key_id"] == key_id
    assert ctl(home, "ledger", "tip").stdout.splitlines()[:2] == [f"seq {seq}", f"hash {digest}"]
