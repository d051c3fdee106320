"""The signed, hash-chained training ledger (CONTRACT.md section 5).

Each event is one `ledger_events` row. Its `hash` is the sha256 of the canonical JSON of
{seq, at, event, run_id, payload, prev_hash, key_id}, and `prev_hash` is the hash of the event
before it (64 zeros for the first), so an edited, removed or reordered row breaks the chain.
`signature` is the daemon's Ed25519 signature of the 32 digest bytes of `hash`: a row rewritten
with a freshly computed hash still fails without the private key, which stays in HOME/keys/.

An append runs inside the caller's write transaction, so a verdict and its event commit together
or not at all. On SQLite that transaction began with BEGIN IMMEDIATE, which also serializes
appends across processes: `seq = last + 1` cannot be taken twice. On PostgreSQL, where writers
run side by side (several daemons and their trainers, possibly on several hosts), the first
append of a transaction takes an advisory lock held until it commits, then reads the tip.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from oneseekd.certify.artifacts import ARTIFACT_EVENT, RecordedArtifact, check_artifacts
from oneseekd.config import HomePaths
from oneseekd.db.engine import read_session, serialize
from oneseekd.db.models import Artifact, LedgerEvent, LedgerKey, utcnow
from oneseekd.errors import OneseekError

log = structlog.get_logger("oneseekd.ledger")

ALGORITHM = "ed25519"
GENESIS_HASH = "0" * 64
KEY_FILE = "ledger_ed25519.pem"
PROOF_FILE = "ledger_proof.json"
MAX_PROBLEMS = 100
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


def key_id_of(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()


# --- the signing key ---------------------------------------------------------------------------
def key_path(paths: HomePaths) -> Path:
    return paths.root / "keys" / KEY_FILE


def load_or_create_key(paths: HomePaths) -> Ed25519PrivateKey:
    """The home's signing key, created on first use; one open to other users is refused."""
    path = key_path(paths)
    if not path.exists():
        _create_key(path)
    return _load_key(path)


def _create_key(path: Path) -> None:
    folder = path.parent
    if not folder.is_dir():
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder.chmod(0o700)
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    tmp = folder / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # unlike rename, never replaces a key another process just wrote
        except FileExistsError:
            return  # another process was first: its key is the home's key
        except OSError:  # a file system without hard links
            if path.exists():
                return
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    log.info("ledger_key_created", path=str(path))


def _load_key(path: Path) -> Ed25519PrivateKey:
    try:
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise OneseekError(
                f"the ledger signing key {path} is open to other users (mode {mode:04o})",
                [f"run `chmod 600 {path}` so that only the daemon's user can read it"],
            )
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise OneseekError(f"cannot read the ledger signing key {path}: {exc.strerror}") from exc
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        key = None
        reason = str(exc)
    else:
        reason = "it is not an Ed25519 key"
    if not isinstance(key, Ed25519PrivateKey):
        raise OneseekError(
            f"the ledger signing key {path} cannot be used: {reason}",
            [
                "restore the file from a backup, or move it away to sign with a new key "
                "(events signed so far keep verifying with their recorded public key)"
            ],
        )
    return key


# --- appending ---------------------------------------------------------------------------------
class Ledger:
    """Appends signed events with the home's key, inside the caller's write session."""

    def __init__(
        self,
        engine: Engine,
        private_key: Ed25519PrivateKey,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.engine = engine
        self.clock = clock
        self._private_key = private_key
        raw = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.public_key = raw.hex()
        self.key_id = key_id_of(raw)

    @classmethod
    def for_home(
        cls, engine: Engine, paths: HomePaths, clock: Callable[[], datetime] = utcnow
    ) -> Ledger:
        return cls(engine, load_or_create_key(paths), clock)

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
        return row


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


# --- verifying ---------------------------------------------------------------------------------
@dataclass
class VerifyReport:
    ok: bool
    events: int
    artifacts: int
    problems: list[str] = field(default_factory=list)
    proofs: int = 0
    current: str | None = None  # the DNA oneseek-certified/OneSeek-7B-Zero-CURRENT names


@dataclass(frozen=True)
class _Stored:
    """A ledger row exactly as the database holds it (no type conversion on the way out)."""

    seq: int
    at: str
    event: str
    run_pk: int | None
    payload: str
    prev_hash: str
    hash: str
    key_id: str
    signature: str

    @property
    def name(self) -> str:
        return f"ledger event #{self.seq} ({self.event})"

    def recomputed(self) -> str | None:
        try:
            payload = json.loads(self.payload)
            return event_hash(
                self.seq, self.at, self.event, self.run_pk, payload, self.prev_hash, self.key_id
            )
        except (TypeError, ValueError):
            return None


def verify(engine: Engine, paths: HomePaths) -> VerifyReport:
    """Re-check the chain, the signatures, every artifact and every ledger_proof.json."""
    problems: list[str] = []
    with read_session(engine) as session:  # one read transaction: one consistent snapshot
        keys = _public_keys(session, problems)
        events = [
            _Stored(*row)
            for row in session.execute(
                text(
                    "SELECT seq, at, event, run_id, payload, prev_hash, hash, key_id, signature "
                    "FROM ledger_events ORDER BY seq"
                )
            )
        ]
        artifacts = list(session.scalars(select(Artifact).order_by(Artifact.id)))
    problems.extend(_check_chain(events, keys))
    problems.extend(check_artifacts(artifacts, _recorded_artifacts(events), paths))
    proofs = _proof_files(paths)
    problems.extend(_check_proofs(proofs, events, keys, paths))
    current = _check_current(paths, events, problems)
    if len(problems) > MAX_PROBLEMS:
        more = len(problems) - MAX_PROBLEMS
        problems = [*problems[:MAX_PROBLEMS], f"... and {more} more problems"]
    return VerifyReport(not problems, len(events), len(artifacts), problems, len(proofs), current)


def _check_current(paths: HomePaths, events: list[_Stored], problems: list[str]) -> str | None:
    """CURRENT (a view: other programs may re-point it) must name a run this ledger certified."""
    from oneseekd.certify.layout import resolve_current

    now = resolve_current(paths)
    if now.source is None:
        return None  # nothing is current yet
    if now.dna is None:
        problems.append(str(now.problem))
        return None
    certified = {
        json.loads(ev.payload).get("dna")
        for ev in events
        if ev.event == "dna_v2_training_completed" and ev.recomputed() == ev.hash
    }
    if now.dna not in certified:
        problems.append(
            f"OneSeek-7B-Zero-CURRENT names {now.dna}, which this ledger never certified"
        )
    return now.dna


def _proof_files(paths: HomePaths) -> list[Path]:
    """Every certified folder's proof; a folder still being written (a dot name) is not one yet."""
    if not paths.certified.is_dir():
        return []
    found = paths.certified.glob(f"*/{PROOF_FILE}")
    # <run_id> and CURRENT are links to certified folders: each proof is read once
    return sorted(
        p for p in found if not p.parent.name.startswith(".") and not p.parent.is_symlink()
    )


def _public_keys(session: Session, problems: list[str]) -> dict[str, Ed25519PublicKey]:
    keys: dict[str, Ed25519PublicKey] = {}
    for row in session.scalars(select(LedgerKey)):
        try:
            raw = bytes.fromhex(row.public_key)
            key = Ed25519PublicKey.from_public_bytes(raw)
        except ValueError:
            problems.append(f"ledger key {row.key_id[:16]} is not a valid Ed25519 public key")
            continue
        if row.algorithm != ALGORITHM or key_id_of(raw) != row.key_id:
            problems.append(
                f"ledger key {row.key_id[:16]} was altered: its key_id is not the sha256 of "
                "its public key"
            )
            continue
        keys[row.key_id] = key
    return keys


def _check_chain(events: list[_Stored], keys: dict[str, Ed25519PublicKey]) -> Iterator[str]:
    previous: _Stored | None = None
    for ev in events:
        expected = 1 if previous is None else previous.seq + 1
        if ev.seq != expected:
            yield _gap(previous, ev)
        elif previous is None and ev.prev_hash != GENESIS_HASH:
            yield f"{ev.name} does not start the chain: its prev_hash is not 64 zeros"
        elif previous is not None and ev.prev_hash != previous.hash:
            yield (
                f"{ev.name} does not follow #{previous.seq}: its prev_hash is not the hash "
                f"of #{previous.seq}"
            )
        if ev.recomputed() != ev.hash:
            yield f"{ev.name} was altered: its hash does not match its content"
        yield from _check_signature(ev, keys)
        previous = ev


def _gap(previous: _Stored | None, ev: _Stored) -> str:
    first = 1 if previous is None else previous.seq + 1
    last = ev.seq - 1
    if last < first:
        return f"{ev.name} is out of sequence"
    missing = (
        f"ledger event #{first} is" if first == last else f"ledger events #{first}-#{last} are"
    )
    if previous is None:
        return f"{missing} missing (the chain starts at #{ev.seq})"
    return f"{missing} missing (the chain jumps from #{previous.seq} to #{ev.seq})"


def _check_signature(ev: _Stored, keys: dict[str, Ed25519PublicKey]) -> Iterator[str]:
    key = keys.get(ev.key_id)
    if key is None:
        yield f"{ev.name} is signed by an unknown key {ev.key_id[:16]}"
        return
    try:
        key.verify(bytes.fromhex(ev.signature), bytes.fromhex(ev.hash))
    except (InvalidSignature, TypeError, ValueError):
        yield f"{ev.name} has a signature that does not verify with key {ev.key_id[:16]}"


def _recorded_artifacts(events: list[_Stored]) -> dict[str, RecordedArtifact]:
    """path -> its latest artifact_recorded event (a path recorded again supersedes)."""
    recorded: dict[str, RecordedArtifact] = {}
    for ev in events:
        if ev.event != ARTIFACT_EVENT:
            continue
        try:
            payload = json.loads(ev.payload)
            recorded[str(payload["path"])] = RecordedArtifact(
                ev.seq, str(payload["sha256"]), int(payload["bytes"])
            )
        except (ValueError, TypeError, KeyError):
            continue  # reported by the chain check as an altered event
    return recorded


def _check_proofs(
    proofs: list[Path],
    events: list[_Stored],
    keys: dict[str, Ed25519PublicKey],
    paths: HomePaths,
) -> Iterator[str]:
    by_seq = {ev.seq: ev for ev in events}
    for proof_path in proofs:
        name = proof_path.relative_to(paths.root).as_posix()
        try:
            data = json.loads(proof_path.read_bytes())
        except (OSError, ValueError) as exc:
            yield f"{name} cannot be read as JSON: {exc}"
            continue
        if not isinstance(data, dict):
            yield f"{name} is not a ledger proof (not a JSON object)"
            continue
        seq = data.get("seq")
        ev = by_seq.get(seq) if isinstance(seq, int) else None
        if ev is None:
            yield f"{name} names ledger event #{seq}, which is not in the ledger"
            continue
        differs = [f for f in ("hash", "prev_hash", "signature") if data.get(f) != getattr(ev, f)]
        if differs:
            yield f"{name} does not match ledger event #{ev.seq}: its {differs[0]} differs"
            continue
        try:
            fields = [data[f] for f in ("at", "event", "run_id", "payload", "prev_hash", "key_id")]
            recomputed: str | None = event_hash(ev.seq, *fields)
        except (KeyError, TypeError, ValueError):
            recomputed = None
        if recomputed != ev.hash:
            yield f"{name} was altered: its hash does not match its content"
            continue
        key = keys.get(ev.key_id)
        if key is not None and data.get("public_key") != _raw_hex(key):
            yield f"{name} carries a public key that is not ledger key {ev.key_id[:16]}"


def _raw_hex(key: Ed25519PublicKey) -> str:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()
