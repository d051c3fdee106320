"""The current certified run: oneseek-certified/OneSeek-7B-Zero-CURRENT, its .txt, and
`isCurrent` in every weights JSON this home certified.

oneseekd moves the pointer only on a new certification (`[certify] make_current`) or on
`oneseekctl promote`; another program re-pointing the link (CivicAI's "Set as Active") is left
as it is. A move is two steps: inside a write transaction its ledger event is appended, the
weights JSONs whose `isCurrent` flips are recorded again with the bytes they will hold, and an
intent note (`.OneSeek-7B-Zero-CURRENT.pending`, naming the event) is written; once that
committed, `settle` points the link, rewrites those JSONs, writes the .txt and removes the note.

The pointer lock (certify/pointerlock.py) is held from the note to the end of its transaction,
and through every settle: a note is judged only once its writer's transaction is over, so a
committed move is always finished and an uncommitted one always dropped, by whoever settles
next (the next promote, publish, the daemon's start). A crash anywhere leaves the old pointer
or the new one (each link is swapped in by rename). A view another program left in the way (a
folder where the .txt goes) is refused before anything is recorded; one that appears after the
commit keeps the note, with the link and the recorded JSONs moved, until a later settle can
write it.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import Engine, select
from sqlalchemy import event as sa_event
from sqlalchemy.orm import Session

from oneseekd.certify import pointerlock
from oneseekd.certify.artifacts import FileDigest, record_artifact
from oneseekd.certify.layout import (
    CURRENT_LINK,
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
from oneseekd.errors import OneseekError
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
    """Inside the transaction that appended `event` (a certification or a promotion): take the
    pointer lock until the transaction ends, finish a committed move a crash left, record the
    weights JSONs again as they will read once `version` is current, and write the intent
    note. Nothing visible changes until `settle`."""
    _hold_until_the_end(session, paths)
    # an older committed note: finish it first, or its recorded JSONs never are (when its .txt
    # is blocked, its link and JSONs moved: this move's note takes the .txt over). Read through
    # the ledger's plain engine: a second writer's BEGIN IMMEDIATE would wait on this one.
    with contextlib.suppress(ViewBlocked):
        _settle_held(ledger.engine, paths)
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
    session.info[_NOTED] = True


_HOLDING = "oneseekd.current.holding"  # session.info: the pointer lock is held until it ends
_NOTED = "oneseekd.current.noted"  # session.info: this transaction wrote the intent note


def _hold_until_the_end(session: Session, paths: HomePaths) -> None:
    """The pointer lock, from now until the transaction commits (its note is then judged
    committed by anyone) or rolls back (its note is removed first: it will never commit)."""
    if session.info.get(_HOLDING):
        return
    pointerlock.acquire(paths)
    session.info[_HOLDING] = True

    def committed(s: Session) -> None:
        if s.info.pop(_HOLDING, False):
            s.info.pop(_NOTED, None)
            pointerlock.release(paths)

    def rolled_back(s: Session) -> None:
        if s.info.pop(_HOLDING, False):
            try:
                if s.info.pop(_NOTED, False):
                    _clear_note(paths)
            finally:
                pointerlock.release(paths)

    sa_event.listen(session, "after_commit", committed)
    sa_event.listen(session, "after_rollback", rolled_back)


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


class ViewBlocked(OneseekError):
    """A view of the pointer cannot be written: something another program left is in the way."""


def blocked_views(paths: HomePaths, again: str) -> list[str]:
    """What stands where a pointer move writes (the link, its .txt, the note), each with the
    fix; `again` is the command that finishes the move once it is out of the way."""
    problems = []
    for path, what in (
        (current_link(paths), "the link to the current model"),
        (current_txt(paths), "the file naming the current model"),
        (note_path(paths), "oneseekd's note of a move in progress"),
    ):
        if path.is_dir() and not path.is_symlink():
            problems.append(
                f"{path} is a folder, where {what} belongs: move it out of the way "
                f"(mv '{path}' '{path}.moved'), then run `{again}`"
            )
    return problems


def settle(engine: Engine, paths: HomePaths) -> str | None:
    """Finish a pointer move whose event committed, or drop a note whose transaction did not,
    holding the pointer lock (so a note whose writer is still in its transaction is waited
    for, never judged). Returns the DNA it made current, else None. Idempotent, and a no-op
    without a note. Raises ViewBlocked, the note kept, when the .txt cannot be written."""
    if not os.path.lexists(note_path(paths)):
        return None
    with pointerlock.held(paths):
        return _settle_held(engine, paths)


def _settle_held(engine: Engine, paths: HomePaths) -> str | None:
    path = note_path(paths)
    try:
        note = json.loads(path.read_bytes())
        dna, version, event = str(note["dna"]), str(note["version"]), str(note["event"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        if not path.is_dir():
            path.unlink(missing_ok=True)  # written half by a crash before its commit
        return None
    with read_session(engine) as session:
        committed = session.scalars(
            select(LedgerEvent.seq).where(LedgerEvent.hash == event)
        ).first()
    if committed is None:  # its writer's transaction is over (we hold the lock): it never will
        _clear_note(paths)
        return None
    folder = paths.certified / dna
    if not is_certified_dir(folder):
        return None  # its folder is not in place yet: publish renames it, then settles
    blocked = blocked_views(paths, "oneseekctl promote " + dna)
    link = current_link(paths)
    if not (link.is_dir() and not link.is_symlink()):  # never delete another program's folder
        replace_link(link, dna)
    target = weights_json(paths, version)
    with read_session(engine) as session:
        recorded = [paths.root / rel for rel, _ in recorded_weights_jsons(session)]
    for weights in recorded:  # as recorded, whatever else is in the way
        new = flipped(weights, weights == target) if weights.is_file() else None
        if new is not None:
            write_bytes(weights, new)
    if blocked:
        log.error("current_view_blocked", dna=dna, problems=blocked)
        raise ViewBlocked(
            f"the move of {CURRENT_LINK} to {dna} is recorded, but it cannot be finished",
            [*blocked, "or restart oneseekd: its start finishes the move"],
        )
    _write_txt(paths, dna)
    _clear_note(paths)
    log.info("current_moved", dna=dna)
    return dna


def _write_txt(paths: HomePaths, dna: str) -> None:
    """OneSeek-7B-Zero-CURRENT.txt: the certified folder's absolute path, swapped in by rename
    (after the link: CivicAI's service reads the link first)."""
    txt = current_txt(paths)
    text = f"{(paths.certified / dna).absolute()}\n".encode()
    if not (txt.is_file() and txt.read_bytes() == text):
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
