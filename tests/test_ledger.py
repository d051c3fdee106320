"""The signed, hash-chained ledger: what the intake and queue append, and every tampering that
`verify` (and `oneseekctl ledger verify`) must catch, each with the exact words it prints.
The tests on a `world` run on SQLite and on PostgreSQL (`db_url`)."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from homes import ctl, open_home, request, training_home
from pg import Outsider
from sqlalchemy import Engine, select

from oneseekd import queue
from oneseekd.certify.artifacts import file_digest, record_artifact, sha256_file
from oneseekd.certify.ledger import Ledger, canonical_json, key_path, ledger_proof
from oneseekd.certify.verify import verify
from oneseekd.config import Config
from oneseekd.db.engine import write_session
from oneseekd.db.models import LedgerEvent
from oneseekd.errors import OneseekError
from oneseekd.home import HomePaths
from oneseekd.intake.accept import Intake
from oneseekd.intake.incoming import Verdict

DNA = "OneSeek-7B-Zero.v1.0.abc123"
WEIGHTS = "models/oneseek-7b-zero/weights/oneseek-7b-zero-v1.0-kb-llama-3-1-8b-swedish.pth"


@dataclass
class World:
    config: Config
    engine: Engine
    intake: Intake
    outsider: Outsider

    @property
    def paths(self) -> HomePaths:
        return self.config.home

    @property
    def ledger(self) -> Ledger:
        return self.intake.ledger

    def take(self, body: object) -> Verdict:
        return self.intake.take_bytes(json.dumps(body).encode(), source="submit")

    def db(self) -> Outsider:
        """A second program's connection, for tampering as an outsider would."""
        return self.outsider

    def rows(self) -> list[dict[str, Any]]:
        return self.outsider.mappings("SELECT * FROM ledger_events ORDER BY seq")

    def problems(self) -> list[str]:
        return verify(self.engine, self.paths).problems


@pytest.fixture
def world(tmp_path: Path, db_url: str | None) -> Iterator[World]:
    config, engine = open_home(training_home(tmp_path / "home"), db_url)
    outsider = Outsider(db_url, config.home.db_file)
    yield World(config, engine, Intake(engine, config.home), outsider)
    outsider.close()
    engine.dispose()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- what is appended --------------------------------------------------------------------------
def test_canonical_json_is_one_byte_form_and_refuses_nan() -> None:
    assert canonical_json({"b": [1, 2.5], "a": "Riksdag å"}) == (
        '{"a":"Riksdag å","b":[1,2.5]}'.encode()
    )
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        canonical_json({"loss": float("nan")})


def test_verdicts_are_chained_signed_events(world: World) -> None:
    accepted = world.take(request(request_id="civic-1"))
    rejected = world.take(request(base_models=["falcon"]))
    duplicate = world.take(request(request_id="civic-1"))
    assert (accepted.status, rejected.status, duplicate.status) == (
        "queued",
        "rejected",
        "duplicate",
    )

    rows = world.rows()
    assert [(r["seq"], r["event"]) for r in rows] == [
        (1, "request_accepted"),
        (2, "request_rejected"),
        (3, "request_duplicate"),
    ]
    assert json.loads(rows[0]["payload"]) == {
        "request": accepted.request_pk,
        "run_id": accepted.run_id,
        "source": "submit",
        "version": "1.0",
        "base_models": ["kb-llama-3-1-8b-swedish"],
    }
    run_pk = world.db().execute("SELECT id FROM runs").fetchone()[0]
    assert [r["run_id"] for r in rows] == [run_pk, None, None]
    assert json.loads(rows[1]["payload"]) == {
        "request": rejected.request_pk,
        "source": "submit",
        "problems": [
            "base_models: model name 'falcon' matches no base model; available: "
            "kb-llama-3-1-8b-swedish, mistral-7b-instruct, qwen-2-5-7b"
        ],
    }
    assert json.loads(rows[2]["payload"]) == {
        "request": duplicate.request_pk,
        "source": "submit",
        "duplicate_of": accepted.request_pk,
        "duplicate_of_run": accepted.run_id,
    }

    # the chain and the signatures, recomputed here independently of the module
    (key_id, public_hex), *more = world.db().execute("SELECT key_id, public_key FROM ledger_keys")
    assert more == []
    assert key_id == sha256_hex(bytes.fromhex(public_hex))
    public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_hex))
    prev = "0" * 64
    for r in rows:
        assert r["prev_hash"] == prev
        assert r["key_id"] == key_id
        body = {
            "seq": r["seq"],
            "at": r["at"],
            "event": r["event"],
            "run_id": r["run_id"],
            "payload": json.loads(r["payload"]),
            "prev_hash": r["prev_hash"],
            "key_id": r["key_id"],
        }
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert r["hash"] == sha256_hex(text.encode())
        public.verify(bytes.fromhex(r["signature"]), bytes.fromhex(r["hash"]))  # raises if bad
        prev = r["hash"]

    report = verify(world.engine, world.paths)
    assert (report.ok, report.events, report.artifacts, report.problems) == (True, 3, 0, [])


def test_queue_changes_append_their_events(world: World) -> None:
    failing = world.take(request(version="1.0")).run_id
    waiting = world.take(request(version="1.1")).run_id
    flagged = world.take(request(version="1.2")).run_id
    assert failing and waiting and flagged
    ledger = world.ledger

    run = queue.claim_next(world.engine, None, ledger=ledger)
    assert run is not None and run.run_id == failing
    failed = queue.Ending("failed", "error", "Traceback\nboom")
    queue.finish(world.engine, run.id, failed, ledger=ledger)
    queue.request_cancel(world.engine, waiting, ledger=ledger)
    world.db().execute("UPDATE runs SET cancel_requested = true WHERE run_id = ?", flagged)
    assert queue.cancel_queued_flagged(world.engine, ledger=ledger) == [flagged]

    events = [(r["event"], json.loads(r["payload"])) for r in world.rows()[3:]]
    assert events == [
        (
            "run_started",
            {"run_id": failing, "attempt": 1, "base_models": ["kb-llama-3-1-8b-swedish"],
             "version": "1.0"},
        ),
        (
            "run_failed",
            {"run_id": failing, "outcome": "error", "attempt": 1, "exit_code": None,
             "detail": "error: boom"},
        ),
        (
            "run_cancelled",
            {"run_id": waiting, "outcome": "cancelled", "attempt": 0, "exit_code": None,
             "detail": "cancelled while queued"},
        ),
        (
            "run_cancelled",
            {"run_id": flagged, "outcome": "cancelled", "attempt": 0, "exit_code": None,
             "detail": "cancel flag set while queued"},
        ),
    ]  # fmt: skip
    assert world.problems() == []


def test_a_succeeded_run_leaves_its_completion_to_the_trainer(world: World) -> None:
    world.take(request())
    run = queue.claim_next(world.engine, None, ledger=world.ledger)
    assert run is not None
    queue.finish(world.engine, run.id, queue.Ending("succeeded", "succeeded"), ledger=world.ledger)
    assert [r["event"] for r in world.rows()] == ["request_accepted", "run_started"]


def test_an_event_commits_with_its_transaction_or_not_at_all(world: World) -> None:
    world.take(request())
    with pytest.raises(RuntimeError), write_session(world.engine) as session:
        world.ledger.append(session, "run_started", {"run_id": "x"})
        raise RuntimeError("the state change failed")
    assert [r["seq"] for r in world.rows()] == [1]
    world.take(request())
    assert [r["seq"] for r in world.rows()] == [1, 2]
    assert world.problems() == []


def test_concurrent_appends_keep_one_contiguous_chain(world: World) -> None:
    def append_many(worker: int) -> None:
        for i in range(15):
            with write_session(world.engine) as session:
                world.ledger.append(session, "probe", {"worker": worker, "i": i})

    threads = [threading.Thread(target=append_many, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r["seq"] for r in world.rows()] == list(range(1, 61))
    assert world.problems() == []


# --- the key -----------------------------------------------------------------------------------
def test_the_key_is_created_private_once_and_then_reused(world: World) -> None:
    path = key_path(world.paths)
    assert not path.exists()
    first = world.ledger
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    pem = path.read_bytes()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")  # PKCS8, unencrypted
    again = Ledger.for_home(world.engine, world.paths)
    assert again.key_id == first.key_id
    assert path.read_bytes() == pem
    key = serialization.load_pem_private_key(pem, password=None)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert first.key_id == sha256_hex(raw)
    # no temporary file left behind; the public key pinned beside it (keys/trusted_keys too)
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "ledger_ed25519.pem",
        "oneseekd.pub",
        "trusted_keys",
    ]


def test_a_key_open_to_other_users_is_refused(world: World) -> None:
    path = key_path(world.paths)
    Ledger.for_home(world.engine, world.paths)
    path.chmod(0o640)
    with pytest.raises(OneseekError) as caught:
        Ledger.for_home(world.engine, world.paths)
    assert str(caught.value) == (
        f"the ledger signing key {path} is open to other users (mode 0640)\n"
        f"  - run `chmod 600 {path}` so that only the daemon's user can read it"
    )
    # the intake refuses before it writes anything: no verdict without its ledger event
    with pytest.raises(OneseekError, match="is open to other users"):
        world.take(request())
    assert world.db().execute("SELECT count(*) FROM training_requests").fetchone() == (0,)


def test_a_key_that_is_not_ed25519_is_refused(world: World) -> None:
    path = key_path(world.paths)
    path.parent.mkdir(mode=0o700)
    path.write_text("not a key")
    path.chmod(0o600)
    with pytest.raises(OneseekError, match=r"^the ledger signing key .* cannot be used: "):
        Ledger.for_home(world.engine, world.paths)


# --- tampering ---------------------------------------------------------------------------------
@pytest.fixture
def certified(world: World) -> World:
    """Two accepted runs, a recorded weights file, and a certified folder proving the last event."""
    first = world.take(request(version="1.0"))
    second = world.take(request(version="1.1"))
    assert first.run_id and second.run_id
    weights = world.paths.root / WEIGHTS
    weights.write_bytes(b"\x00weights" * 1000)
    with write_session(world.engine) as session:
        run_pk = session.scalars(select(LedgerEvent.run_id).where(LedgerEvent.seq == 1)).one()
        record_artifact(
            session,
            world.ledger,
            world.paths,
            weights,
            "weights",
            run_pk,
            "kb-llama-3-1-8b-swedish",
        )
        last = world.ledger.append(
            session, "dna_v2_training_completed", {"run_id": first.run_id, "dna": DNA}
        )
        proof = ledger_proof(session, last)
    folder = world.paths.certified / DNA  # a certified folder is named by its DNA
    folder.mkdir()
    (folder / "ledger_proof.json").write_text(json.dumps(proof, indent=2))
    assert verify(world.engine, world.paths).problems == []
    return world


def proof_file(w: World) -> Path:
    (path,) = w.paths.certified.glob("*/ledger_proof.json")
    return path


def test_an_untouched_home_verifies(certified: World) -> None:
    report = verify(certified.engine, certified.paths)
    assert (report.ok, report.events, report.artifacts, report.proofs) == (True, 4, 1, 1)
    assert [r["event"] for r in certified.rows()] == [
        "request_accepted",
        "request_accepted",
        "artifact_recorded",
        "dna_v2_training_completed",
    ]
    row = certified.db().execute("SELECT path, kind, bytes, sha256 FROM artifacts").fetchone()
    assert row == (WEIGHTS, "weights", 8000, sha256_file(certified.paths.root / WEIGHTS))


def test_one_changed_byte_in_an_artifact(certified: World) -> None:
    path = certified.paths.root / WEIGHTS
    recorded = sha256_file(path)
    data = bytearray(path.read_bytes())
    data[4000] ^= 1
    path.write_bytes(bytes(data))
    assert certified.problems() == [
        f"artifact {WEIGHTS} changed: sha256 {recorded} recorded, {sha256_file(path)} on disk"
    ]


def test_a_missing_artifact(certified: World) -> None:
    (certified.paths.root / WEIGHTS).unlink()
    assert certified.problems() == [f"artifact {WEIGHTS} is missing"]


def test_a_deleted_ledger_row(certified: World) -> None:
    certified.db().execute("DELETE FROM ledger_events WHERE seq = 2")
    assert certified.problems() == ["ledger event #2 is missing (the chain jumps from #1 to #3)"]


def test_deleted_first_rows(certified: World) -> None:
    certified.db().execute("DELETE FROM ledger_events WHERE seq <= 2")
    assert certified.problems() == ["ledger events #1-#2 are missing (the chain starts at #3)"]


def test_swapped_payloads(certified: World) -> None:
    rows = certified.rows()
    con = certified.db()
    con.execute("UPDATE ledger_events SET payload = ? WHERE seq = 1", rows[1]["payload"])
    con.execute("UPDATE ledger_events SET payload = ? WHERE seq = 2", rows[0]["payload"])
    assert certified.problems() == [
        "ledger event #1 (request_accepted) was altered: its hash does not match its content",
        "ledger event #2 (request_accepted) was altered: its hash does not match its content",
    ]


def test_reordered_rows(certified: World) -> None:
    con = certified.db()
    con.execute("UPDATE ledger_events SET seq = 100 WHERE seq = 1")
    con.execute("UPDATE ledger_events SET seq = 1 WHERE seq = 2")
    con.execute("UPDATE ledger_events SET seq = 2 WHERE seq = 100")
    problems = certified.problems()
    assert problems[:2] == [
        "ledger event #1 (request_accepted) does not start the chain: its prev_hash is not "
        "64 zeros",
        "ledger event #1 (request_accepted) was altered: its hash does not match its content",
    ]
    assert (
        "ledger event #3 (artifact_recorded) does not follow #2: its prev_hash is not the "
        "hash of #2"
    ) in problems


def test_an_edited_payload(certified: World) -> None:
    row = certified.rows()[0]
    payload = json.loads(row["payload"])
    payload["base_models"] = ["qwen-2-5-7b"]
    certified.db().execute(
        "UPDATE ledger_events SET payload = ? WHERE seq = 1", json.dumps(payload)
    )
    assert certified.problems() == [
        "ledger event #1 (request_accepted) was altered: its hash does not match its content"
    ]


def test_a_rewritten_chain_fails_its_signatures(certified: World) -> None:
    """Whoever edits a row and recomputes every hash after it still cannot sign."""
    con = certified.db()
    rows = certified.rows()
    prev = "0" * 64
    for i, r in enumerate(rows):
        payload = json.loads(r["payload"])
        if i == 0:
            payload["version"] = "9.9"
        body = {
            "seq": r["seq"], "at": r["at"], "event": r["event"], "run_id": r["run_id"],
            "payload": payload, "prev_hash": prev, "key_id": r["key_id"],
        }  # fmt: skip
        digest = sha256_hex(canonical_json(body))
        con.execute(
            "UPDATE ledger_events SET payload = ?, prev_hash = ?, hash = ? WHERE seq = ?",
            canonical_json(payload).decode(),
            prev,
            digest,
            r["seq"],
        )
        prev = digest
    key = rows[0]["key_id"][:16]
    assert certified.problems() == [
        f"ledger event #1 (request_accepted) has a signature that does not verify with key {key}",
        f"ledger event #2 (request_accepted) has a signature that does not verify with key {key}",
        f"ledger event #3 (artifact_recorded) has a signature that does not verify with key {key}",
        f"ledger event #4 (dna_v2_training_completed) has a signature that does not verify "
        f"with key {key}",
        f"{proof_file(certified).relative_to(certified.paths.root)} does not match ledger "
        "event #4: its hash differs",
        f"ledger.tip anchors ledger event #4 with hash {rows[3]['hash'][:16]}, but the "
        f"ledger's #4 has hash {prev[:16]}: the chain was rewritten",
    ]


def test_an_unknown_signing_key(certified: World) -> None:
    con = certified.db()
    con.foreign_keys_off()
    con.execute("UPDATE ledger_events SET key_id = ? WHERE seq = 3", "f" * 64)
    assert certified.problems() == [
        "ledger event #3 (artifact_recorded) was altered: its hash does not match its content",
        "ledger event #3 (artifact_recorded) is signed by an unknown key ffffffffffffffff",
    ]


def test_an_edited_artifacts_row(certified: World) -> None:
    recorded = sha256_file(certified.paths.root / WEIGHTS)
    certified.db().execute("UPDATE artifacts SET sha256 = ?", "a" * 64)
    assert certified.problems() == [
        f"artifact {WEIGHTS} does not match the ledger: the artifacts table says sha256 "
        f"{'a' * 64}, ledger event #3 {recorded}"
    ]


def test_a_deleted_artifacts_row(certified: World) -> None:
    certified.db().execute("DELETE FROM artifacts")
    assert certified.problems() == [
        f"artifact {WEIGHTS} is recorded by ledger event #3 but has no row in the artifacts table"
    ]


def test_an_edited_ledger_proof(certified: World) -> None:
    path = proof_file(certified)
    proof = json.loads(path.read_text())
    proof["payload"]["run_id"] = "run-forged"
    path.write_text(json.dumps(proof))
    name = path.relative_to(certified.paths.root)
    assert certified.problems() == [f"{name} was altered: its hash does not match its content"]
    proof["hash"] = "0" * 64
    path.write_text(json.dumps(proof))
    assert certified.problems() == [f"{name} does not match ledger event #4: its hash differs"]


def test_an_artifact_recorded_again_is_held_to_its_newest_event(certified: World) -> None:
    path = certified.paths.root / WEIGHTS
    path.write_bytes(b"resumed and rewritten")
    with write_session(certified.engine) as session:
        record_artifact(session, certified.ledger, certified.paths, path, "weights", None, None)
    assert certified.problems() == []
    assert certified.db().execute("SELECT count(*), max(bytes) FROM artifacts").fetchone() == (
        1,
        21,
    )


def test_an_artifact_outside_the_home_is_refused(world: World, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.bin"
    outside.write_bytes(b"x")
    refused = pytest.raises(OneseekError, match=r"^artifact .*elsewhere\.bin is outside the home ")
    with refused, write_session(world.engine) as session:
        record_artifact(session, world.ledger, world.paths, outside, "weights", None, None)
    assert world.rows() == []


# --- oneseekctl ledger verify ------------------------------------------------------------------
def test_ctl_ledger_verify(tmp_path: Path) -> None:
    home = training_home(tmp_path / "home")
    assert ctl(home, "db", "upgrade").exit_code == 0  # a read never makes the database
    empty = ctl(home, "ledger", "verify")
    assert (empty.exit_code, empty.stdout) == (0, "Ledger OK: 0 events, 0 artifacts verified.\n")
    assert (
        ctl(home, "submit", "--base-models", "kb-llama", "--dataset", "civic.jsonl").exit_code == 0
    )
    assert ctl(home, "submit", "--base-models", "falcon", "--dataset", "civic.jsonl").exit_code == 1
    good = ctl(home, "ledger", "verify")
    assert (good.exit_code, good.stdout) == (0, "Ledger OK: 2 events, 0 artifacts verified.\n")

    con = sqlite3.connect(home / "oneseek.db", isolation_level=None)
    con.execute("UPDATE ledger_events SET event = 'request_accepted' WHERE seq = 2")
    bad = ctl(home, "ledger", "verify")
    assert bad.exit_code == 1
    assert bad.stderr.splitlines() == [
        "Error: the ledger does not verify",
        "  - ledger event #2 (request_accepted) was altered: its hash does not match its content",
    ]
    as_json = ctl(home, "ledger", "verify", "--json")
    assert as_json.exit_code == 1
    assert json.loads(as_json.stdout) == {
        "ok": False,
        "events": 2,
        "artifacts": 0,
        "proofs": 0,
        "current": None,
        "problems": [
            "ledger event #2 (request_accepted) was altered: its hash does not match its content"
        ],
    }


def test_at_is_stored_exactly_as_hashed(world: World) -> None:
    when = datetime(2026, 11, 24, 19, 0, 0, 123456, tzinfo=UTC)
    with write_session(world.engine) as session:
        world.ledger.append(session, "probe", {}, now=when)
    assert world.rows()[0]["at"] == "2026-11-24T19:00:00.123456Z"
    assert world.problems() == []


def test_a_staged_file_is_recorded_at_its_final_place(world: World) -> None:
    staging = world.paths.certified / ".run-x.tmp"
    staging.mkdir()
    (staging / "oneseek_dna.json").write_text('{"dna": "OneSeek-7B-Zero.v1.0.abcdef"}')
    final = world.paths.certified / "run-x"
    with write_session(world.engine) as session:
        row = record_artifact(
            session,
            world.ledger,
            world.paths,
            final / "oneseek_dna.json",
            "certified",
            None,
            None,
            digest=file_digest(staging / "oneseek_dna.json"),
        )
    assert row.path == "models/oneseek-certified/run-x/oneseek_dna.json"
    assert json.loads(world.rows()[0]["payload"])["path"] == row.path
    assert world.problems() == [
        "artifact models/oneseek-certified/run-x/oneseek_dna.json is missing"
    ]
    staging.rename(final)
    assert world.problems() == []
