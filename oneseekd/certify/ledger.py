"""The signed, hash-chained training ledger (CONTRACT.md section 5).

Each event is one `ledger_events` row. Its `hash` is the sha256 of the canonical JSON of
{seq, at, event, run_id, payload, prev_hash, key_id}, and `prev_hash` is the hash of the event
before it (64 zeros for the first), so an edited, removed or reordered row breaks the chain.
`signature` is the daemon's Ed25519 signature of the 32 digest bytes of `hash`: a row rewritten
with a freshly computed hash still fails without the private key, which stays in HOME/keys/
(oneseekd.certify.keys: the public key is pinned outside the database). After each commit that
appended events, HOME/ledger.tip anchors the newest one (oneseekd.certify.tip), so a deleted
tail is caught too. Verifying is oneseekd.certify.verify.

An append runs inside the caller's write transaction, so a verdict and its event commit together
or not at all. On SQLite that transaction began with BEGIN IMMEDIATE, which also serializes
appends across processes: `seq = last + 1` cannot be taken twice. On PostgreSQL, where writers
run side by side (several daemons and their trainers, possibly on several hosts), the first
append of a transaction takes an advisory lock held until it commits, then reads the tip.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import Engine, event, select
from sqlalchemy.orm import Session

from oneseekd.certify.ed25519 import PrivateKey
from oneseekd.certify.keys import KEY_FILE, key_id_of, key_path, load_or_create_key, raw_public
from oneseekd.certify.tip import Tip, write_tip
from oneseekd.db.engine import serialize
from oneseekd.db.models import LedgerEvent, LedgerKey, utcnow
from oneseekd.home import HomePaths

log = structlog.get_logger("oneseekd.ledger")

ALGORITHM = "ed25519"
GENESIS_HASH = "0" * 64
PROOF_FILE = "ledger_proof.json"
ANCHOR = "oneseekd.ledger.anchor"  # session.info: the tip to anchor after commit
LISTENING = "oneseekd.ledger.anchoring"  # session.info: the commit hook is in place
LEDGER_LOCK = "oneseekd.ledger"  # one chain, appended to by one transaction at a time
_AT_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # exactly as oneseekd.db.models.UTCDateTime stores it
_HASHED = (
    "sha256 of the canonical JSON (sorted keys, no spaces, UTF-8) of seq, at, event, run_id, "
    "payload, prev_hash and key_id; the signature is Ed25519 over the 32 digest bytes"
)


def canonical_json(obj: Any) -> bytes:
    """The one byte form of a JSON value that is hashed; NaN and infinities are refused."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def at_text(when: datetime) -> str:
    if when.tzinfo is None:
        raise ValueError("naive datetime given to the ledger")
    return when.astimezone(UTC).strftime(_AT_FORMAT)


def event_hash(
    seq: int,
    at: str,
    event: str,
    run_pk: int | None,
    payload: Any,
    prev_hash: str,
    key_id: str,
) -> str:
    body = {
        "seq": seq,
        "at": at,
        "event": event,
        "run_id": run_pk,
        "payload": payload,
        "prev_hash": prev_hash,
        "key_id": key_id,
    }
    return hashlib.sha256(canonical_json(body)).hexdigest()


# --- appending ---------------------------------------------------------------------------------
class Ledger:
    """Appends signed events with the home's key, inside the caller's write session."""

    def __init__(
        self,
        engine: Engine,
        private_key: PrivateKey,
        clock: Callable[[], datetime] = utcnow,
        paths: HomePaths | None = None,
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.paths = paths  # where ledger.tip is anchored; None: nowhere
        self._private_key = private_key
        raw = raw_public(private_key)
        self.public_key = raw.hex()
        self.key_id = key_id_of(raw)

    @classmethod
    def for_home(
        cls, engine: Engine, paths: HomePaths, clock: Callable[[], datetime] = utcnow
    ) -> Ledger:
        return cls(engine, load_or_create_key(paths), clock, paths)

    def append(
        self,
        session: Session,
        event: str,
        payload: dict[str, Any],
        run_pk: int | None = None,
        *,
        now: datetime | None = None,
    ) -> LedgerEvent:
        """Chain one event after the last one; it commits with the caller's transaction."""
        when = (now or self.clock()).astimezone(UTC)
        body = canonical_json(payload)
        # A write session is one transaction holding the database's write lock, so what it
        # learned about the key and the chain's tip stays true until it ends: a batch of
        # appends reads them once.
        tip_key = ("oneseekd.ledger.tip", self.key_id)
        if tip_key not in session.info:
            serialize(session, LEDGER_LOCK)
            if session.get(LedgerKey, self.key_id) is None:
                session.add(
                    LedgerKey(
                        key_id=self.key_id,
                        algorithm=ALGORITHM,
                        public_key=self.public_key,
                        created_at=when,
                    )
                )
            last = session.execute(
                select(LedgerEvent.seq, LedgerEvent.hash).order_by(LedgerEvent.seq.desc()).limit(1)
            ).first()
            session.info[tip_key] = (0, GENESIS_HASH) if last is None else (last.seq, last.hash)
        last_seq, prev_hash = session.info[tip_key]
        seq = last_seq + 1
        digest = event_hash(
            seq, at_text(when), event, run_pk, json.loads(body), prev_hash, self.key_id
        )
        row = LedgerEvent(
            seq=seq,
            at=when,
            event=event,
            run_id=run_pk,
            payload=body.decode("utf-8"),
            prev_hash=prev_hash,
            hash=digest,
            key_id=self.key_id,
            signature=self._private_key.sign(bytes.fromhex(digest)).hex(),
        )
        # no flush: seq and hash are set here and the tip is kept above, so the INSERTs of a
        # batch go out together at commit (or at the next query that needs them)
        session.add(row)
        session.info[tip_key] = (seq, digest)
        self._anchor_after_commit(
            session, Tip(seq, digest, row.signature, self.key_id, at_text(when))
        )
        return row

    def _anchor_after_commit(self, session: Session, tip: Tip) -> None:
        """Write ledger.tip once the transaction holding the event commits (an anchor ahead
        of the chain would read as deleted rows); a rollback drops it."""
        if self.paths is None:
            return
        if not session.info.get(LISTENING):
            event.listen(session, "after_commit", self._write_anchor)
            event.listen(session, "after_rollback", _drop_anchor)
            session.info[LISTENING] = True
        session.info[ANCHOR] = tip

    def _write_anchor(self, session: Session) -> None:
        tip = session.info.pop(ANCHOR, None)
        if tip is None or self.paths is None:
            return
        try:
            write_tip(self.paths, tip)
        except OSError as exc:  # committed already: a lagging anchor only weakens a check
            log.warning("ledger_tip_unwritten", seq=tip.seq, error=str(exc))


def _drop_anchor(session: Session) -> None:
    session.info.pop(ANCHOR, None)


def ledger_proof(session: Session, event: LedgerEvent) -> dict[str, Any]:
    """What ledger_proof.json holds: the event, its chain link, signature and public key."""
    key = session.get_one(LedgerKey, event.key_id)
    return {
        "seq": event.seq,
        "at": at_text(event.at),
        "event": event.event,
        "run_id": event.run_id,
        "payload": json.loads(event.payload),
        "prev_hash": event.prev_hash,
        "key_id": event.key_id,
        "hash": event.hash,
        "signature": event.signature,
        "algorithm": key.algorithm,
        "public_key": key.public_key,
        "hashed": _HASHED,
    }


__all__ = [
    "KEY_FILE",
    "Ledger",
    "canonical_json",
    "event_hash",
    "key_id_of",
    "key_path",
    "ledger_proof",
]
