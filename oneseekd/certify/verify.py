"""`oneseekctl ledger verify`: the chain, its signatures against the pinned keys, its anchors,
every recorded artifact and every certified folder.

What it cannot catch is written down in docs/reliability.md ("What verify cannot catch").
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, bindparam, select, text
from sqlalchemy.orm import Session

from oneseekd import boundedjson
from oneseekd.certify.artifacts import ARTIFACT_EVENT, RecordedArtifact, check_artifacts
from oneseekd.certify.ed25519 import PublicKey
from oneseekd.certify.keys import TRUSTED_FILE, key_id_of, raw_public, trusted_keys
from oneseekd.certify.layout import is_dna
from oneseekd.certify.ledger import ALGORITHM, GENESIS_HASH, PROOF_FILE, event_hash
from oneseekd.certify.tip import TIP_FILE, Tip, read_tip, tip_of
from oneseekd.certify.walk import COMPLETED_EVENT, Signed, check_layout
from oneseekd.db.engine import read_session
from oneseekd.db.models import Artifact, LedgerKey
from oneseekd.home import HomePaths

MAX_PROBLEMS = 100
MAX_PROOF_BYTES = 1024 * 1024


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

    def parsed(self) -> tuple[str, Any]:
        try:
            return self.event, json.loads(self.payload)
        except ValueError:
            return self.event, None

    def recomputed(self) -> str | None:
        try:
            payload = json.loads(self.payload)
            return event_hash(
                self.seq, self.at, self.event, self.run_pk, payload, self.prev_hash, self.key_id
            )
        except (TypeError, ValueError):
            return None


def verify(engine: Engine, paths: HomePaths) -> VerifyReport:
    """Re-check the chain, the signatures, the anchors, every artifact and every
    ledger_proof.json."""
    problems: list[str] = []
    keys, key_problems = trusted_keys(paths)
    problems.extend(key_problems)
    with read_session(engine) as session:  # one read transaction: one consistent snapshot
        recorded_keys = _public_keys(session, problems)
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
    if not keys and events:
        problems.append(
            f"no public key is pinned in keys/{TRUSTED_FILE}, so no signature can be trusted: "
            "start oneseekd once to pin its key (a home made before pinning gets it then)"
        )
    problems.extend(_check_chain(events, keys, recorded_keys))
    problems.extend(check_artifacts(artifacts, _recorded_artifacts(events), paths))
    proofs = _proof_files(paths)
    problems.extend(_check_proofs(proofs, events, keys, paths))
    problems.extend(_check_tip(paths, events, keys))
    layout_problems, current = check_layout(paths, Signed.of([ev.parsed() for ev in events]))
    problems.extend(layout_problems)
    if len(problems) > MAX_PROBLEMS:
        more = len(problems) - MAX_PROBLEMS
        problems = [*problems[:MAX_PROBLEMS], f"... and {more} more problems"]
    return VerifyReport(not problems, len(events), len(artifacts), problems, len(proofs), current)


def altered(session: Session, paths: HomePaths, seqs: Collection[int]) -> list[str]:
    """The ledger events `seqs` whose content no longer matches their hash, or whose signature
    does not verify with a pinned key (the hash alone where no key is pinned yet): what
    `promote` checks of the events it decides from, without walking the whole chain."""
    if not seqs:
        return []
    keys, _ = trusted_keys(paths)
    rows = session.execute(
        text(
            "SELECT seq, at, event, run_id, payload, prev_hash, hash, key_id, signature "
            "FROM ledger_events WHERE seq IN :seqs ORDER BY seq"
        ).bindparams(bindparam("seqs", expanding=True)),
        {"seqs": sorted(seqs)},
    )
    problems: list[str] = []
    for row in rows:
        ev = _Stored(*row)
        if ev.recomputed() != ev.hash:
            problems.append(f"{ev.name} was altered: its hash does not match its content")
        elif keys:
            problems.extend(_check_signature(ev, keys, pinned=True, known={}))
    return problems


def _beyond(name: str, seq: int, events: list[_Stored]) -> str:
    """An anchor past the chain's end: its tail (or all of it) was deleted."""
    if not events:
        return (
            f"{name} anchors ledger event #{seq}, but the ledger is empty: its events were deleted"
        )
    last = events[-1].seq
    return (
        f"{name} anchors ledger event #{seq}, but the ledger ends at #{last}: the events "
        f"after #{last} were deleted"
    )


def _check_tip(
    paths: HomePaths, events: list[_Stored], keys: dict[str, PublicKey]
) -> Iterator[str]:
    tip = read_tip(paths)
    if isinstance(tip, str):
        yield tip
        return
    if tip is None:
        if events:
            yield (
                f"{TIP_FILE} is missing, so a deleted tail cannot be ruled out: restore it (or "
                "compare `oneseekctl ledger tip` with a copy kept elsewhere); oneseekd writes "
                "it again at the next event"
            )
        return
    yield from _check_anchor(TIP_FILE, tip, events, keys)


def _check_anchor(
    name: str, tip: Tip, events: list[_Stored], keys: dict[str, PublicKey]
) -> Iterator[str]:
    key = keys.get(tip.key_id)
    if key is None:
        yield (
            f"{name} is signed by key {tip.key_id[:16]}, which is not pinned in keys/{TRUSTED_FILE}"
        )
        return
    try:
        key.verify(bytes.fromhex(tip.signature), bytes.fromhex(tip.hash))
    except ValueError:  # BadSignature is one, and so is a signature that is not hex
        yield f"{name} has a signature that does not verify with key {tip.key_id[:16]}"
        return
    by_seq = {ev.seq: ev for ev in events}
    ev = by_seq.get(tip.seq)
    if ev is None:
        if not events or tip.seq > events[-1].seq:
            yield _beyond(name, tip.seq, events)
        return  # a gap inside the chain is reported by the chain check
    if ev.hash != tip.hash:
        yield (
            f"{name} anchors ledger event #{tip.seq} with hash {tip.hash[:16]}, but the "
            f"ledger's #{tip.seq} has hash {ev.hash[:16]}: the chain was rewritten"
        )


def _proof_files(paths: HomePaths) -> list[Path]:
    """Every certified folder's proof; a folder still being written (a dot name) is not one yet."""
    if not paths.certified.is_dir():
        return []
    found = paths.certified.glob(f"*/{PROOF_FILE}")
    # a <run id> link leads to its certified folder: that proof is counted once, there
    return sorted(
        p for p in found if not p.parent.name.startswith(".") and not p.parent.is_symlink()
    )


def _public_keys(session: Session, problems: list[str]) -> dict[str, PublicKey]:
    keys: dict[str, PublicKey] = {}
    for row in session.scalars(select(LedgerKey)):
        try:
            raw = bytes.fromhex(row.public_key)
            key = PublicKey(raw)
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


def _check_chain(
    events: list[_Stored],
    keys: dict[str, PublicKey],
    recorded: dict[str, PublicKey],
) -> Iterator[str]:
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
        yield from _check_signature(ev, keys or recorded, pinned=bool(keys), known=recorded)
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


def _check_signature(
    ev: _Stored,
    keys: dict[str, PublicKey],
    *,
    pinned: bool,
    known: dict[str, PublicKey],
) -> Iterator[str]:
    key = keys.get(ev.key_id)
    if key is None:
        if pinned and ev.key_id in known:  # in the database only: anyone could have added it
            yield (
                f"{ev.name} is signed by key {ev.key_id[:16]}, which is not pinned in "
                f"keys/{TRUSTED_FILE}"
            )
        else:
            yield f"{ev.name} is signed by an unknown key {ev.key_id[:16]}"
        return
    try:
        key.verify(bytes.fromhex(ev.signature), bytes.fromhex(ev.hash))
    except (TypeError, ValueError):  # BadSignature is a ValueError
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
    keys: dict[str, PublicKey],
    paths: HomePaths,
) -> Iterator[str]:
    by_seq = {ev.seq: ev for ev in events}
    for proof_path in proofs:
        name = proof_path.relative_to(paths.root).as_posix()
        try:
            data = boundedjson.read(proof_path, max_bytes=MAX_PROOF_BYTES, what=name)
        except (OSError, ValueError) as exc:
            yield f"{name} cannot be read as JSON: {exc}"
            continue
        if not isinstance(data, dict):
            yield f"{name} is not a ledger proof (not a JSON object)"
            continue
        seq = data.get("seq")
        ev = by_seq.get(seq) if isinstance(seq, int) else None
        if ev is None:
            anchor = tip_of(data)
            if anchor is not None and (not events or anchor.seq > events[-1].seq):
                problems = list(_check_anchor(name, anchor, events, keys))
                yield from problems or [_beyond(name, anchor.seq, events)]
                continue
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
        if key is not None and data.get("public_key") != raw_public(key).hex():
            yield f"{name} carries a public key that is not ledger key {ev.key_id[:16]}"
            continue
        folder = proof_path.parent.name
        dna = data["payload"].get("dna") if isinstance(data["payload"], dict) else None
        if ev.event == COMPLETED_EVENT and is_dna(folder) and dna != folder:
            yield f"{name} proves the certification of {dna}, not of {folder} (a copied proof)"
