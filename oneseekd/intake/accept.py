"""One validator for every door: a request becomes a queued run, or a verdict saying why not.

(incoming.py decodes what arrived; batch.py holds what a batch of decisions reads once.)

Files, `oneseekctl submit` and rows INSERTed by other programs all end here, so the same
request gets the same verdict whichever way it came in. Nothing here raises on bad input.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from oneseekd import gpus, queue
from oneseekd.catalog.query import by_key, home_roots, usable_by_host
from oneseekd.catalog.scan import Root
from oneseekd.certify.ledger import Ledger
from oneseekd.config import DEFAULT_CPU_PROCESSES, default_host
from oneseekd.db.engine import read_session, serialize, write_session
from oneseekd.db.models import (
    BaseModel,
    Run,
    TrainingRequest,
    unreadable_columns,
    utcnow,
)
from oneseekd.home import HomePaths
from oneseekd.intake import hubnames
from oneseekd.intake.batch import Batch, ended_versions, no_single_host, run_spec
from oneseekd.intake.checks import (
    check_dataset,
    check_per_model,
    memory_problems,
    resolve_models,
    run_folder_problem,
    taken_versions,
)
from oneseekd.intake.duplicates import duplicate, duplicate_key, first_of
from oneseekd.intake.incoming import Incoming, Verdict, log_verdict, new_run_id, safe_text
from oneseekd.intake.schema import (
    TrainingRequestModel,
    checkable_parts,
    parse_request,
)
from oneseekd.spec.host import HostFacts, check


@dataclass
class _Prepared:
    """A request as far as it could be read outside the write lock."""

    request: TrainingRequestModel | None
    dataset: Path | None
    problems: list[str]
    model_names: list[str] = field(default_factory=list)  # resolved in the batch's catalog
    duplicate_key: str | None = None  # the request as read, with its dataset's bytes


class Intake:
    def __init__(
        self,
        engine: Engine,
        paths: HomePaths,
        clock: Callable[[], datetime] = utcnow,
        ledger: Ledger | None = None,
        host: str | None = None,
        roots: Sequence[Root] | None = None,
        cpu_processes: int = DEFAULT_CPU_PROCESSES,
        device_memory: Callable[[int], int | None] = gpus.device_memory,
    ) -> None:
        self.engine = engine
        self.device_memory = device_memory  # bytes a run may plan on: a GPU's, or the RAM
        self.paths = paths
        self.clock = clock
        self._ledger = ledger
        self.cpu_processes = cpu_processes  # [trainer] cpu_processes: see oneseekd/gpus.py
        self.host = host or default_host()  # whose catalog rows win a tie
        self._roots = list(roots) if roots is not None else None

    @property
    def roots(self) -> list[Root]:
        """The model roots a catalog row's path must lie in; read from the home's
        configuration at first use unless given (the daemon sets them again on a reload)."""
        if self._roots is None:
            self._roots = home_roots(self.paths)
        return self._roots

    @roots.setter
    def roots(self, roots: Sequence[Root]) -> None:
        self._roots = list(roots)

    @property
    def ledger(self) -> Ledger:
        """Every verdict is a ledger event, committed with the verdict itself. The key is
        loaded (or created) at first use, so `Intake(engine, paths)` stays cheap."""
        if self._ledger is None:
            self._ledger = Ledger.for_home(self.engine, self.paths, self.clock)
        return self._ledger

    # --- the doors ---------------------------------------------------------------------------
    def take_bytes(
        self, raw: bytes, *, source: str, source_name: str | None = None, claim: str | None = None
    ) -> Verdict:
        """A file's content (dropped or submitted)."""
        verdict = self.take_batch([Incoming.of_bytes(raw, source, source_name, claim)])[0]
        assert verdict is not None  # only rows can be decided by someone else
        return verdict

    def take_batch(self, items: list[Incoming]) -> list[Verdict | None]:
        """Decide several requests in one transaction: the catalog, the taken versions and the
        ledger's tip are read once, and one commit covers every verdict. A row that someone
        else decided meanwhile gets None."""
        # a request is created when it arrives, before it is judged: created_at <= decided_at
        received = self.clock()
        self._check_rows(items)
        prepared = [self._prepare(item) for item in items]  # file reads outside the lock
        now = max(self.clock(), received)
        self.ledger  # noqa: B018 - load the key before taking the write lock
        verdicts: list[Verdict | None] = []
        with write_session(self.engine) as session:
            # daemons on other hosts decide too: one batch at a time, as SQLite's lock does
            serialize(session, "oneseekd.intake")
            rows = list(session.scalars(select(BaseModel).where(BaseModel.state != "missing")))
            produced, reserved = ended_versions(session)
            batch = Batch(
                models=by_key(rows, self.roots, self.host),
                taken=taken_versions(session, self.paths) | produced,
                reserved=reserved,
                rows=rows,
                usable=usable_by_host(rows, self.roots, self.host),
            )
            for item, ready in zip(items, prepared, strict=True):
                verdicts.append(self._decide(session, batch, item, ready, now, received))
        for item, verdict in zip(items, verdicts, strict=True):
            if verdict is not None:
                log_verdict(verdict, item.source, item.source_name)
        return verdicts

    # --- the decision ------------------------------------------------------------------------
    def _check_rows(self, items: list[Incoming]) -> None:
        """A row another program wrote with a time or JSON column that cannot be read is
        refused with the reason: it reads as None, so it would be queued looking fine while
        its stored text stays wrong for every other reader."""
        rows = [item for item in items if item.row_id is not None]
        if not rows:
            return
        with read_session(self.engine) as session:
            for item in rows:
                assert item.row_id is not None
                bad = unreadable_columns(session, TrainingRequest, item.row_id)
                item.problems = [
                    f"the row's {column} column is not {expected}; leave {column} out of "
                    "the INSERT (only payload is needed)"
                    for column, expected in bad.items()
                ] + item.problems

    def _prepare(self, item: Incoming) -> _Prepared:
        if item.problems:
            return _Prepared(None, None, list(item.problems))
        request, problems = parse_request(item.data)
        if request is None:
            # the schema refused it; the model and dataset checks still run on those fields
            # if they are well-formed, so one verdict lists every problem
            names, dataset_name = checkable_parts(item.data)
            if dataset_name is not None:
                problems += check_dataset(dataset_name, self.paths)[1]
            return _Prepared(None, None, problems, names or [])
        dataset, problems = check_dataset(request.dataset, self.paths, request.val_fraction)
        key = duplicate_key(request, dataset) if dataset is not None else None
        return _Prepared(request, dataset, problems, list(request.base_models), key)

    def _gpu_problems(self, request: TrainingRequestModel) -> list[str]:
        """A request for more GPUs than this host has can never run: refuse it now."""
        asked = [("gpus", request.gpus)] + [
            (f"per_model.{name}.gpus", o.gpus)
            for name, o in request.per_model.items()
            if o.gpus != request.gpus
        ]
        here = gpus.host_gpus()
        problems: list[str] = []
        for where, value in asked:
            problem = gpus.too_many(value, here, self.cpu_processes)
            if problem:
                problems.append(f"{where}: {problem}")
        return problems

    def _decide(
        self,
        session: Session,
        batch: Batch,
        item: Incoming,
        ready: _Prepared,
        now: datetime,
        received: datetime,
    ) -> Verdict | None:
        request, dataset, problems = ready.request, ready.dataset, ready.problems
        row = self._request_row(session, item, request, received)
        if row is None:  # a pending row someone else decided meanwhile
            return None
        row.duplicate_key = ready.duplicate_key
        first = first_of(session, row, request)
        if first is not None:
            return duplicate(self.ledger, session, row, *first, now, self.paths)
        run = None
        if request is not None:
            hub = hubnames.resolve(session, batch, row, list(request.base_models), self.host)
            run, more = self._queue(session, batch, row, request, dataset, now, hub)
            problems = problems + more
            if run is None and not problems and hub.missing:
                return self._wait(session, row, hub, now)
        elif ready.model_names:
            hub = hubnames.resolve(session, batch, row, ready.model_names, self.host)
            more = resolve_models(batch.models, hub.names, self.roots, self.host)[1]
            problems = problems + hub.problems + more
        return self._record(session, row, run, problems, now)

    def _request_row(
        self,
        session: Session,
        item: Incoming,
        request: TrainingRequestModel | None,
        received: datetime,
    ) -> TrainingRequest | None:
        if item.row_id is not None:
            row = session.get(TrainingRequest, item.row_id)
            if row is None or row.status != "pending":
                return None
        else:
            row = TrainingRequest(
                payload=item.payload, status="pending", source=item.source, created_at=received
            )
            session.add(row)
        source_name = item.source_name
        row.source_name = safe_text(source_name) if source_name else row.source_name
        if item.row_id is None or row.download_id is None:
            # a request decided again after its download keeps its file's claim token
            row.claim = item.claim
            row.content_sha256 = item.sha
        row.request_key = request.request_id if request else None
        session.flush()
        return row

    def _queue(
        self,
        session: Session,
        batch: Batch,
        row: TrainingRequest,
        request: TrainingRequestModel,
        dataset: Path | None,
        now: datetime,
        hub: hubnames.HubNames,
    ) -> tuple[Run | None, list[str]]:
        models, problems = resolve_models(batch.models, hub.names, self.roots, self.host)
        problems = hub.problems + problems + self._gpu_problems(request)
        keys = [m.key for m in models]
        per_model: dict[str, str] = {}
        if models and request.per_model:
            per_model, more = check_per_model(request.per_model, keys)
            problems += more
        taken = batch.taken
        version = request.version
        if version is not None and version in taken:
            problems.append(
                f"version {version} already exists; omit version to take the next "
                f"free one ({batch.next_free}), or name a new one"
            )
        # the session autoflushes: runs queued earlier in this batch are seen too
        if (
            request.run_id is not None
            and session.scalars(select(Run.id).where(Run.run_id == request.run_id)).first()
        ):
            problems.append(
                f"run id {request.run_id} already exists; omit it (or RUN_ID) to get a new one"
            )
        elif request.run_id is not None:
            problems += run_folder_problem(request.run_id, self.paths)
        if hub.missing:  # the checks that need those models wait for their download
            return None, problems
        spec = None
        if models and not problems:
            version = version or batch.next_free
            spec = run_spec(request, models, per_model, version)
            # impossible combinations, each with its fix, before a GPU is touched
            here = gpus.host_gpus()
            problems += check(spec, HostFacts.light(here))
            memory = None if problems else self.device_memory(here)
            if memory is not None:  # a step that cannot fit this host is refused now
                problems += memory_problems(spec, models, memory, here)
        hosts = sorted(h for h, got in batch.usable.items() if set(keys) <= got) if models else []
        if models and not problems and not hosts:
            problems.append(no_single_host(batch.usable, keys))
        if problems or dataset is None or not hosts or spec is None:
            return None, problems
        host = self.host if self.host in hosts else hosts[0]
        fingerprints = {
            r.key: r.fingerprint or "" for r in batch.rows if r.host == host and r.key in keys
        }
        version = version or batch.next_free
        run = Run(
            run_id=request.run_id or new_run_id(now),
            request_id=row.id,
            request_key=request.request_id,
            state="queued",
            priority=request.priority,
            version=version,
            base_models=keys,
            fingerprints=fingerprints,
            fingerprints_host=host,
            dataset=str(dataset.relative_to(self.paths.datasets.resolve())),
            config=spec.to_config(),
            attempts=0,
            cancel_requested=False,
            queued_at=now,
        )
        session.add(run)
        batch.take(version)  # later requests of the same batch see it taken
        queue.queued(session, run, now, f"request #{row.id} from {row.source}")
        return run, []

    def withdraw(self, row_id: int, reason: str) -> bool:
        """Refuse a request still waiting for its download (`train`'s stop); False when it
        was decided meanwhile."""
        now = self.clock()
        self.ledger  # noqa: B018 - load the key before taking the write lock
        with write_session(self.engine) as session:
            serialize(session, "oneseekd.intake")  # not while a daemon decides it
            row = session.get(TrainingRequest, row_id)
            if row is None or row.status != "pending":
                return False
            verdict = self._record(session, row, None, [reason], now)
            source, name = row.source, row.source_name
        log_verdict(verdict, source, name)
        return True

    def _wait(
        self, session: Session, row: TrainingRequest, hub: hubnames.HubNames, now: datetime
    ) -> Verdict:
        """No verdict yet: the request stays `pending` until the download of a model it names
        ends (hubnames.py); the download is created here, in the same transaction."""
        downloads = hubnames.wait(session, hub.missing, now, self.host)
        first = downloads[0]
        row.download_id = first.id
        return Verdict(
            "waiting",
            row.id,
            download=first.id,
            waiting_for=f"download-{first.id} ({first.repository})",
        )

    def _record(
        self,
        session: Session,
        row: TrainingRequest,
        run: Run | None,
        problems: list[str],
        now: datetime,
    ) -> Verdict:
        row.decided_at = now
        if run is None:
            row.status = "rejected"
            row.problems = problems or ["the request was refused"]
            row.error = "\n".join(row.problems)
            self.ledger.append(
                session,
                "request_rejected",
                {
                    "request": row.id,
                    "source": row.source,
                    "problems": [safe_text(p) for p in row.problems],
                },
                now=now,
            )
            return Verdict("rejected", row.id, problems=list(row.problems))
        row.status = "queued"
        row.run_id = run.id
        row.error = None
        row.problems = None
        self.ledger.append(
            session,
            "request_accepted",
            {
                "request": row.id,
                "run_id": run.run_id,
                "source": row.source,
                "version": run.version,
                "base_models": list(run.base_models),
            },
            run.id,
            now=now,
        )
        return Verdict("queued", row.id, run_id=run.run_id)
