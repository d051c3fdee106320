"""`oneseekctl promote RUN|DNA`: make a certified run the current one (a rollback too).

A promotion is a ledger event (`model_promoted`), recorded with the weights JSONs it rewrites
in one transaction; the link, the .txt and those files follow once it committed
(certify/current.py says how a crash in between is finished)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from oneseekd.certify import current
from oneseekd.certify.certified import COMPLETED_EVENT
from oneseekd.certify.gate import overridden
from oneseekd.certify.layout import (
    certified_dir,
    is_certified_dir,
    is_dna,
    resolve_current,
    run_gate,
)
from oneseekd.certify.ledger import Ledger
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


def _certified(session: Session, ref: str) -> tuple[Run, str]:
    """The run a RUN id or a DNA names, with its DNA; refused unless it is certified."""
    events = session.execute(
        select(LedgerEvent.run_id, LedgerEvent.payload).where(LedgerEvent.event == COMPLETED_EVENT)
    ).all()
    dnas = {pk: str(json.loads(payload)["dna"]) for pk, payload in events if pk is not None}
    if is_dna(ref):
        pks = [pk for pk, dna in dnas.items() if dna == ref]
        if not pks:
            raise OneseekError(
                f"no certified run has the DNA {ref}",
                ["list the runs with `oneseekctl runs`; a DNA reads OneSeek-7B-Zero.v<ver>.<hex>"],
            )
        return session.get_one(Run, pks[0]), ref
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
    return run, dnas[run.id]


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
        run, dna = _certified(session, ref)
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
        needs_files = current.flipped(target, True) is not None or any(
            current.flipped(paths.root / rel, False) is not None
            for rel, _ in current.recorded_weights_jsons(session)
            if paths.root / rel != target
        )
        if before == dna and not needs_files:
            return Promotion(run.run_id, dna, before, False)
        held = overridden(run_gate(paths, dna))
        reason = (reason or "").strip() or None
        if held and reason is None:
            raise OneseekError(
                f"run {run.run_id} was not made current when it was certified: {held}",
                [
                    "to make it current anyway, say why (it is recorded in the ledger): "
                    f'oneseekctl promote {ref} --reason "..."'
                ],
            )
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
