"""The current certified run: oneseek-certified/OneSeek-7B-Zero-CURRENT, its .txt, and
`isCurrent` in every weights JSON this home certified.

oneseekd moves the pointer only on a new certification (`[certify] make_current`) or on
`oneseekctl promote`; another program re-pointing the link (CivicAI's "Set as Active") is left
as it is. A move is two steps: inside a write transaction its ledger event is appended, the
weights JSONs whose `isCurrent` flips are recorded again with the bytes they will hold, and an
intent note (`.OneSeek-7B-Zero-CURRENT.pending`, naming the event) is written; once that
committed, `settle` points the link and the .txt, rewrites those JSONs and removes the note. A
crash anywhere leaves the old pointer or the new one (each link is swapped in by rename), and
`settle` (run by the next promote, by publish and at the daemon's start) finishes a move whose
event committed and drops a note whose transaction never did.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from oneseekd.certify.artifacts import FileDigest, record_artifact
from oneseekd.certify.layout import (
    PENDING_NOTE,
    current_link,
    current_txt,
    is_certified_dir,
)
from oneseekd.certify.ledger import Ledger
from oneseekd.certify.staging import (
    fsync_dir,
    render_json,
    replace_link,
    staging_path,
    write_bytes,
)
from oneseekd.db.engine import read_session
from oneseekd.db.models import Artifact, LedgerEvent
from oneseekd.home import HomePaths
from oneseekd.naming import versioned_name

log = structlog.get_logger("oneseekd.certify")

PROMOTED_EVENT = "model_promoted"
WEIGHTS_JSON_KIND = "metadata"  # the artifact kind of weights/oneseek-7b-zero-v<ver>.json


def note_path(paths: HomePaths) -> Path:
    return paths.certified / PENDING_NOTE


def weights_json(paths: HomePaths, version: str) -> Path:
    return paths.zero / "weights" / f"{versioned_name(version)}.json"


def flipped(path: Path, is_current: bool) -> bytes | None:
    """The bytes the weights JSON at path holds with `isCurrent` set, or None when it already
    says so (or is not a JSON object this home wrote)."""
    try:
        data: Any = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("isCurrent") is is_current:
        return None
    data["isCurrent"] = is_current
    return render_json(data, strict=True)


def recorded_weights_jsons(session: Session) -> list[tuple[str, int | None]]:
    rows = session.execute(
        select(Artifact.path, Artifact.run_id)
        .where(Artifact.kind == WEIGHTS_JSON_KIND)
        .order_by(Artifact.id)
    )
    return [(path, owner) for path, owner in rows]


def note_move(
    session: Session,
    ledger: Ledger,
    paths: HomePaths,
    dna: str,
    run_id: str,
    version: str,
    event: LedgerEvent,
) -> None:
    """Inside the transaction that appended `event` (a certification or a promotion): record
    the weights JSONs again as they will read once `version` is current, and write the intent
    note. Nothing visible changes until `settle`."""
    target = weights_json(paths, version)
    for rel, owner in recorded_weights_jsons(session):
        path = paths.root / rel
        if not path.is_file():  # staged, not in place yet: it was written as it must read
            continue
        new = flipped(path, path == target)
        if new is not None:
            digest = FileDigest(len(new), _sha256(new))
            record_artifact(
                session, ledger, paths, path, WEIGHTS_JSON_KIND, owner, None, digest=digest
            )
    _write_note(paths, {"dna": dna, "run_id": run_id, "version": version, "event": event.hash})


def _write_note(paths: HomePaths, note: dict[str, str]) -> None:
    paths.certified.mkdir(parents=True, exist_ok=True)
    write_bytes(note_path(paths), render_json(note))
    fsync_dir(paths.certified)


def _clear_note(paths: HomePaths) -> None:
    note_path(paths).unlink(missing_ok=True)
    fsync_dir(paths.certified)


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def settle(engine: Engine, paths: HomePaths) -> str | None:
    """Finish a pointer move whose event committed, or drop a note whose transaction did not.
    Returns the DNA it made current, else None. Idempotent, and a no-op without a note."""
    path = note_path(paths)
    try:
        note = json.loads(path.read_bytes())
        dna, version, event = str(note["dna"]), str(note["version"]), str(note["event"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        path.unlink(missing_ok=True)  # written half by a crash before its commit
        return None
    with read_session(engine) as session:
        committed = session.scalars(
            select(LedgerEvent.seq).where(LedgerEvent.hash == event)
        ).first()
    if committed is None:
        _clear_note(paths)
        return None
    folder = paths.certified / dna
    if not is_certified_dir(folder):
        return None  # its folder is not in place yet: publish renames it, then settles
    point_at(paths, dna)
    target = weights_json(paths, version)
    with read_session(engine) as session:
        recorded = [paths.root / rel for rel, _ in recorded_weights_jsons(session)]
    for weights in recorded:
        new = flipped(weights, weights == target) if weights.is_file() else None
        if new is not None:
            write_bytes(weights, new)
    _clear_note(paths)
    log.info("current_moved", dna=dna)
    return dna


def point_at(paths: HomePaths, dna: str) -> None:
    """OneSeek-7B-Zero-CURRENT -> <dna> (relative) and its .txt (the absolute path), each
    swapped in by rename: the link first, as CivicAI's service reads it first."""
    replace_link(current_link(paths), dna)
    txt = current_txt(paths)
    text = f"{(paths.certified / dna).absolute()}\n".encode()
    if not (txt.is_file() and txt.read_bytes() == text):
        if txt.is_dir() and not txt.is_symlink():  # nothing sensible: leave it to the operator
            raise OSError(f"{txt} is a folder; remove it")
        tmp = staging_path(txt)
        tmp.write_bytes(text)
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, txt)
        fsync_dir(paths.certified)


def current_adapter(paths: HomePaths, key: str) -> dict[str, Any] | None:
    """The current certified run's adapter for base model `key`, to measure on another run's
    held-out rows: {dna, run_id, version, base_hash, path}, or None when nothing is current
    or the current run did not train `key`. Read from its oneseek_dna.json (an artifact)."""
    from oneseekd.certify.layout import certified_dir, resolve_current

    dna = resolve_current(paths).dna
    if dna is None:
        return None
    try:
        data = json.loads((certified_dir(paths, dna) / "oneseek_dna.json").read_bytes())
        version = str(data["version"])
        base_hash = data["inputs"]["base_models"][key]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    folder = paths.zero / "lora_adapters" / versioned_name(version, key)
    if not (folder / "adapter_config.json").is_file():
        return None
    return {
        "dna": dna,
        "run_id": data.get("run_id"),
        "version": version,
        "base_hash": base_hash,
        "path": folder,
    }
