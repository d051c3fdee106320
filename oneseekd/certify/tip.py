"""The ledger's anchored tip: HOME/ledger.tip, the newest event's seq, hash and signature.

Without an anchor a chain whose last rows were deleted is still a valid chain. After every
commit that appended events, the appender replaces ledger.tip (temp name, fsync, rename; a
lock keeps a slower writer from putting back an older tip) and logs `ledger_tip` to the
journal. `ledger verify` then fails when the chain ends before an anchor (ledger.tip or any
certified folder's ledger_proof.json), when it is empty but anchors exist, and when an
anchor's hash is not the chain's. `oneseekctl ledger tip` prints the tip for a witness
elsewhere: an attacker who holds the private key and rewrites every copy of the tip on this
host is caught only by such a copy.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import structlog

from oneseekd import boundedjson
from oneseekd.home import HomePaths

log = structlog.get_logger("oneseekd.ledger")

TIP_FILE = "ledger.tip"
MAX_TIP_BYTES = 64 * 1024


@dataclass(frozen=True)
class Tip:
    """The ledger's last event as anchored outside the database (ledger.tip): a database
    restored to an older copy, or cut short, no longer reaches it."""

    seq: int
    hash: str
    signature: str
    key_id: str
    at: str


def tip_path(paths: HomePaths) -> Path:
    return paths.root / TIP_FILE


def read_tip(paths: HomePaths) -> Tip | str | None:
    """The anchored tip; None when there is none; a string saying why it cannot be read."""
    path = tip_path(paths)
    try:
        data = boundedjson.read(path, max_bytes=MAX_TIP_BYTES, what=TIP_FILE)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return f"{TIP_FILE} cannot be read: {exc}"
    return tip_of(data) or f"{TIP_FILE} is not a ledger tip (seq, hash, signature, key_id, at)"


def tip_of(data: Any) -> Tip | None:
    if not isinstance(data, dict):
        return None
    try:
        tip = Tip(**{f: data[f] for f in ("seq", "hash", "signature", "key_id", "at")})
    except (KeyError, TypeError):
        return None
    if not isinstance(tip.seq, int) or not all(
        isinstance(v, str) for v in (tip.hash, tip.signature, tip.key_id, tip.at)
    ):
        return None
    return tip


def write_tip(paths: HomePaths, tip: Tip) -> None:
    """Replace ledger.tip with tip unless it already anchors a later event."""
    path = tip_path(paths)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = os.open(path.with_name(f".{TIP_FILE}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        current = read_tip(paths)
        if isinstance(current, Tip) and current.seq >= tip.seq:
            return  # another appender was later: its tip stands
        tmp = path.with_name(f".{TIP_FILE}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            json.dump(asdict(tip), fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        os.close(lock)  # releases the lock
    log.info("ledger_tip", seq=tip.seq, hash=tip.hash, key_id=tip.key_id[:16])
