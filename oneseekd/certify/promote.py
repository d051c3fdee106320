"""`oneseekctl promote RUN|DNA`: make a certified run the current one (a rollback too).

A promotion is a ledger event (`model_promoted`), recorded with the weights JSONs it rewrites
in one transaction; the link, the .txt and those files follow once it committed
(certify/current.py says how a crash in between is finished). What it decides from is signed:
the gate's verdict is the run's completion event's, never its folder's oneseek_dna.json, and
every file of the folder and every weights JSON it rewrites must still hold the bytes the
ledger recorded for it. What it writes must be writable: a view another program left in the
way is refused before anything is recorded."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from oneseekd.certify import current
from oneseekd.certify.artifacts import ARTIFACT_EVENT, check_file
from oneseekd.certify.certified import COMPLETED_EVENT
from oneseekd.certify.gate import overridden
from oneseekd.certify.layout import (
    CURRENT_LINK,
    certified_dir,
    is_certified_dir,
    is_dna,
    resolve_current,
)
from oneseekd.certify.ledger import Ledger
from oneseekd.certify.staging import relative
from oneseekd.certify.verify import altered
from oneseekd.db.engine import write_session
from oneseekd.db.models import LedgerEvent, Run
from oneseekd.errors import OneseekError
from oneseekd.home import HomePaths


@dataclass(frozen=True)
class Promotion:
    run_id: str
    dna: str
    previous: str | None  # what CURRENT named before (None: nothing, or not a certified run)
    changed: bool  # False when it was current already, link and files alike


@dataclass(frozen=True)
class _Completion:
    """A run's `dna_v2_training_completed` event: its place in the chain and its payload."""

    seq: int
    payload: dict[str, Any]


def _certified(session: Session, ref: str) -> tuple[Run, str, _Completion]:
    """The run a RUN id or a DNA names, with its DNA and its completion event; refused unless
    it is certified."""
    events = session.execute(
        select(LedgerEvent.seq, LedgerEvent.run_id, LedgerEvent.payload).where(
            LedgerEvent.event == COMPLETED_EVENT
        )
    ).all()
    completions = {
        pk: _Completion(seq, _payload(payload)) for seq, pk, payload in events if pk is not None
    }
    dnas = {pk: str(c.payload.get("dna")) for pk, c in completions.items()}
    if is_dna(ref):
        pks = [pk for pk, dna in dnas.items() if dna == ref]
        if not pks:
            raise OneseekError(
                f"no certified run has the DNA {ref}",
                ["list the runs with `oneseekctl runs`; a DNA reads OneSeek-7B-Zero.v<ver>.<hex>"],
            )
        return session.get_one(Run, pks[0]), ref, completions[pks[0]]
    run = session.scalars(select(Run).where(Run.run_id == ref)).first()
    if run is None:
        raise OneseekError(
            f"no run {ref!r}",
            [
                "name a run id (run-...) or a DNA (OneSeek-7B-Zero.v...); list them with "
                "`oneseekctl runs`"
            ],
        )
    if run.id not in dnas:
        raise OneseekError(
            f"run {ref} is not certified (it is {run.state}); only a certified run can be "
            "made current",
            ["list the certified runs with `oneseekctl runs --state succeeded`"],
        )
    return run, dnas[run.id], completions[run.id]


def _payload(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _signed_files(session: Session) -> dict[str, tuple[int, str, int]]:
    """Each recorded path's newest `artifact_recorded` event: its seq, sha256 and size."""
    rows = session.execute(
        select(LedgerEvent.seq, LedgerEvent.payload)
        .where(LedgerEvent.event == ARTIFACT_EVENT)
        .order_by(LedgerEvent.seq)
    ).all()
    newest: dict[str, tuple[int, str, int]] = {}
    for seq, text in rows:
        data = _payload(text)
        if isinstance(data.get("path"), str):
            newest[data["path"]] = (seq, str(data.get("sha256")), int(data.get("bytes") or 0))
    return newest


def _unmatched(
    session: Session,
    paths: HomePaths,
    folder: Path,
    rewritten: list[Path],
    completion: _Completion,
) -> list[str]:
    """What the move would be decided from and acted on that is not as the ledger signed it:
    the completion event and the file records (altered, or not signed by a pinned key), every
    file of the certified folder and every weights JSON the move rewrites (other bytes)."""
    signed = _signed_files(session)
    inside = f"{relative(paths, folder)}/"
    wanted = sorted(p for p in signed if p.startswith(inside))
    if not wanted:
        return [f"the ledger records no file of {relative(paths, folder)}"]
    wanted += [relative(paths, p) for p in rewritten]
    seqs = {completion.seq} | {signed[rel][0] for rel in wanted if rel in signed}
    problems = altered(session, paths, seqs)
    root = paths.root.resolve()
    for rel in wanted:
        if rel not in signed:
            problems.append(f"artifact {rel} has no {ARTIFACT_EVENT} event in the ledger")
            continue
        problems.extend(check_file(root, rel, *signed[rel][1:]))
    return problems


def promote(
    engine: Engine,
    paths: HomePaths,
    ledger: Ledger,
    ref: str,
    *,
    reason: str | None = None,
    now: datetime | None = None,
) -> Promotion:
    """Make the run (or DNA) `ref` current: the ledger event first, then the pointer. A run
    the gate held back (certify/gate.py) is made current only with a `reason`, which the
    event records with the gate's."""
    current.settle(engine, paths)  # finish a move a crash interrupted, before judging
    before = resolve_current(paths).dna
    with write_session(engine) as session:
        run, dna, completion = _certified(session, ref)
        folder = certified_dir(paths, dna)
        if not is_certified_dir(folder):
            raise OneseekError(
                f"the certified folder of run {run.run_id} is not in place ({folder})",
                [
                    "it is moved into place when the run ends; check `oneseekctl show "
                    f"{run.run_id}` and the daemon's log"
                ],
            )
        target = current.weights_json(paths, run.version)
        rewritten = [
            path
            for path in (paths.root / rel for rel, _ in current.recorded_weights_jsons(session))
            if current.flipped(path, path == target) is not None
        ]
        if before == dna and not rewritten:
            return Promotion(run.run_id, dna, before, False)
        unmatched = _unmatched(session, paths, folder, rewritten, completion)
        if unmatched:
            raise OneseekError(
                f"run {run.run_id} is not made current: what it would be made current "
                "from differs from what the ledger signed",
                [
                    *unmatched,
                    "put back what was changed (`oneseekctl ledger verify` lists every "
                    "difference), or promote another run",
                ],
            )
        # the signed verdict, never the folder's copy of it
        held = overridden(completion.payload.get("gate"))
        reason = (reason or "").strip() or None
        if held and reason is None:
            raise OneseekError(
                f"run {run.run_id} was not made current when it was certified: {held}",
                [
                    "to make it current anyway, say why (it is recorded in the ledger): "
                    f'oneseekctl promote {ref} --reason "..."'
                ],
            )
        again = f"oneseekctl promote {ref}" + (' --reason "..."' if reason else "")
        blocked = current.blocked_views(paths, again)
        if blocked:
            raise OneseekError(f"{CURRENT_LINK} is not moved: nothing was recorded", blocked)
        event = ledger.append(
            session,
            current.PROMOTED_EVENT,
            {
                "run_id": run.run_id,
                "dna": dna,
                "version": run.version,
                "previous": before,
                "reason": reason,
                "overrides_gate": held,
            },
            run.id,
            now=now,
        )
        current.note_move(session, ledger, paths, dna, run.run_id, run.version, event)
    current.settle(engine, paths)
    return Promotion(run.run_id, dna, before, True)
