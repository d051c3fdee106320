"""Moving what a run committed into place: after the transaction that recorded it, never
before. Idempotent and torch-free, so the supervisor finishes what a killed trainer committed.

Order, each step a rename: the outputs (adapters, .pth, merged models, the weights JSON, the
certified folder named by the DNA), then each model's `<key>-adapter` link, then
`oneseek-certified/<run_id>` (the live folder) becomes a link to the certified folder, then a
pending CURRENT move is finished (certify/current.py), then the seed's
`models/OneSeek-7B-Zero-CURRENT -> oneseek-7b-zero`."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import structlog
from sqlalchemy import Engine, select

from oneseekd.certify import current
from oneseekd.certify.certified import COMPLETED_EVENT
from oneseekd.certify.layout import (
    CURRENT_LINK,
    certified_dir,
    dna_version,
    is_dna,
    run_link,
)
from oneseekd.certify.live import owns_live_folder
from oneseekd.certify.staging import fsync_dir, remove, replace_link, staging_path
from oneseekd.db.engine import read_session
from oneseekd.db.models import Artifact, LedgerEvent, Run
from oneseekd.home import HomePaths
from oneseekd.naming import versioned_name

log = structlog.get_logger("oneseekd.certify")


def certified_dna(engine: Engine, run_pk: int) -> str | None:
    """The DNA of the run's completion event, when the ledger holds one."""
    with read_session(engine) as session:
        payload = session.scalars(
            select(LedgerEvent.payload).where(
                LedgerEvent.run_id == run_pk, LedgerEvent.event == COMPLETED_EVENT
            )
        ).first()
    return None if payload is None else str(json.loads(payload)["dna"])


def _output_entry(paths: HomePaths, path: Path) -> Path | None:
    """The entry an artifact file is published with: its folder directly under lora_adapters/,
    merged/ or oneseek-certified/, or the file itself directly under weights/."""
    for container in (
        paths.zero / "lora_adapters",
        paths.zero / "weights",
        paths.zero / "merged",
        paths.certified,
    ):
        if path.is_relative_to(container) and path != container:
            return container / path.relative_to(container).parts[0]
    return None


def publish(engine: Engine, paths: HomePaths, run_pk: int) -> None:
    """Move every output the run committed from its staging name into place and link it (see
    the module's docstring). What is in place stays as it is; what was staged but never
    committed is left alone (see `discard_staged`)."""
    with read_session(engine) as session:
        rows = session.execute(
            select(Artifact.path, Artifact.kind, Artifact.model_key)
            .where(Artifact.run_id == run_pk)
            .order_by(Artifact.id)
        ).all()
        run_id = session.scalars(select(Run.run_id).where(Run.id == run_pk)).first()
    entries: dict[Path, None] = {}
    keys: set[str] = set()
    for path, kind, key in rows:
        entry = _output_entry(paths, paths.root / path)
        if entry is not None:
            entries[entry] = None
        if kind == "adapter" and key:
            keys.add(key)
    for entry in entries:
        staged = staging_path(entry)
        if os.path.lexists(staged) and not os.path.lexists(entry):
            try:
                os.rename(staged, entry)
            except FileNotFoundError:  # published meanwhile by the trainer or the supervisor
                if not os.path.lexists(entry):
                    raise
            fsync_dir(entry.parent)
    for key in sorted(keys):
        _point_adapter_link(engine, paths, key)
    dna = certified_dna(engine, run_pk)
    if dna is None or run_id is None:
        return
    link = run_link(paths, run_id)
    # <run_id> replaces only the run's own live folder; another program's files stay
    ours = not os.path.lexists(link) or owns_live_folder(link, run_id)
    if link.is_symlink() and os.readlink(link) == dna:
        ours = True
    if certified_dir(paths, dna).is_dir() and ours:
        replace_link(link, dna)
    elif not ours:
        log.warning("run_link_refused", run_id=run_id, path=str(link))
    # a view left in the way is logged by settle; its note stays for a later promote or start
    with contextlib.suppress(current.ViewBlocked):
        current.settle(engine, paths)
    replace_link(paths.models / CURRENT_LINK, paths.zero.name)


def _point_adapter_link(engine: Engine, paths: HomePaths, key: str) -> None:
    """lora_adapters/<key>-adapter -> the newest recorded adapter folder of that model that is
    in place, replaced atomically; never an artifact of its own."""
    with read_session(engine) as session:
        recorded = session.scalars(
            select(Artifact.path)
            .where(Artifact.kind == "adapter", Artifact.model_key == key)
            .order_by(Artifact.id.desc())
        ).all()
    for path in recorded:
        folder = _output_entry(paths, paths.root / path)
        if folder is not None and folder.is_dir() and not folder.is_symlink():
            replace_link(folder.parent / f"{key}-adapter", folder.name)
            return


def discard_staged(engine: Engine, paths: HomePaths, run_pk: int) -> None:
    """Remove what an ended run staged but never committed (its committed outputs were moved
    into place by `publish` first), and the live folder of a run that ended uncertified. Only
    for a run that is over: a resumed attempt stages these names again."""
    with read_session(engine) as session:
        run = session.get(Run, run_pk)
        if run is None:
            return
        version, keys, run_id = run.version, list(run.base_models or []), run.run_id
        staged_dnas = [
            p.name.removeprefix(".").removesuffix(".tmp")
            for p in paths.certified.glob(".OneSeek-7B-Zero.v*.tmp")
        ]
        # a staged certified folder is this run's when its version is; its DNA is unknown
        # until certification, so the name cannot be rebuilt from the row
        mine = [d for d in staged_dnas if is_dna(d) and dna_version(d) == version]
    finals = [paths.zero / "weights" / f"{versioned_name(version)}.json"]
    finals += [paths.certified / d for d in mine]
    for key in keys:
        name = versioned_name(version, key)
        finals += [
            paths.zero / "lora_adapters" / name,
            paths.zero / "weights" / f"{name}.pth",
            paths.zero / "merged" / name,
        ]
    for final in finals:
        remove(staging_path(final))
    live = run_link(paths, run_id)
    if owns_live_folder(live, run_id):  # the live folder of a run never certified
        remove(live)
