"""What the trainer reads from and writes to the database about its run."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import Engine, select

from oneseekd import protocol, queue
from oneseekd.catalog.query import home_roots, untrusted_problem
from oneseekd.catalog.scan import Root
from oneseekd.config import default_host
from oneseekd.db.engine import read_session, write_session
from oneseekd.db.models import BaseModel, ModelTraining, Run, utcnow
from oneseekd.errors import OneseekError
from oneseekd.home import HomePaths
from oneseekd.intake.checks import confined_dataset
from oneseekd.spec import request as runspec
from oneseekd.spec.request import RunSpec, SpecError
from oneseekd.times import utc_text

PROGRESS_SECONDS = 1.0
# a `progress` event in the run log at most this often: `oneseekctl logs -f` and the journal
# see a long run go on, without a line per step
PROGRESS_LOG_SECONDS = 30.0
LOGGED = ("model", "epoch", "epochs", "step", "steps", "loss", "tokens_per_s", "eta_s")
LOGGED_PHASE = ("phase", "done", "total", "unit")

log = structlog.get_logger("oneseekd.trainer")


class RunRefused(OneseekError):
    """The run cannot be done as it was accepted (not retried)."""

    exit_code = protocol.EXIT_REFUSED


def this_host() -> str:
    """The host whose catalog rows this trainer trains from (its supervisor's)."""
    return default_host()  # ONESEEK_HOST, as the supervisor set it


def this_attempt() -> int | None:
    """The claim this trainer works for, as its supervisor started it; None when run by hand."""
    raw = os.environ.get(protocol.ENV_ATTEMPT, "")
    return int(raw) if raw.isdigit() else None


@dataclass(frozen=True)
class ModelSpec:
    key: str
    display_name: str
    path: Path
    fingerprint_at_intake: str
    # a pulled model's Hub repository and commit (its catalog row), named by the DNA's inputs
    source_repository: str | None = None
    source_commit: str | None = None


@dataclass(frozen=True)
class RunContext:
    run_pk: int
    run_id: str
    version: str
    config: dict[str, Any]
    dataset: Path
    models: list[ModelSpec]
    home: HomePaths

    @cached_property
    def spec(self) -> RunSpec:
        """The run's typed spec; configs stored before it existed are read by from_legacy."""
        return runspec.load(self.config)

    def hyper(self, key: str) -> dict[str, Any]:
        """One model's options with the run's, resolved once by the spec, as a flat dict."""
        return self.spec.hyper(key)


def load_context(
    engine: Engine, home: HomePaths, run_id: str, roots: Sequence[Root] | None = None
) -> RunContext:
    """The run and its base models. A catalog row is checked again here, as intake did (other
    programs can write the table in between): a key that is not a normalized name or a path
    outside the model roots (the home's configured ones unless given) refuses the run."""
    roots = home_roots(home) if roots is None else roots
    with read_session(engine) as session:
        run = session.scalars(select(Run).where(Run.run_id == run_id)).first()
        if run is None:
            raise RunRefused(f"no run {run_id!r} in the database")
        host = this_host()
        if not (
            isinstance(run.base_models, list)
            and isinstance(run.fingerprints, dict)
            and isinstance(run.config, dict)
        ):
            raise RunRefused(
                f"run {run_id} cannot train",
                ["its row's base_models, fingerprints or config column is not readable JSON"],
            )
        rows = {
            r.key: r
            for r in session.scalars(
                select(BaseModel).where(BaseModel.key.in_(run.base_models), BaseModel.host == host)
            )
        }
        # fingerprints include file times, which differ between hosts' copies: they are
        # compared only on the host whose rows they were taken from
        compare = run.fingerprints_host in (None, host)
    problems: list[str] = []
    models: list[ModelSpec] = []
    for key in run.base_models:
        row = rows.get(key)
        if row is None or row.state != "ready":
            state = "gone from the catalog" if row is None else row.state
            problems.append(f"base model {key} is {state}")
            continue
        untrusted = untrusted_problem(row, roots)
        if untrusted:
            problems.append(f"base model {untrusted}")
            continue
        if compare and row.fingerprint != run.fingerprints.get(key):
            problems.append(
                f"base model {key} changed on disk after the request was accepted "
                "(its catalog fingerprint differs); submit the request again to "
                "train the model as it is now"
            )
            continue
        models.append(
            ModelSpec(
                key,
                row.display_name,
                Path(row.path),
                row.fingerprint or "",
                row.source_repository,
                row.source_commit,
            )
        )
    dataset = home.datasets / run.dataset
    if not dataset.is_file():
        problems.append(f"dataset {run.dataset} is gone from {home.datasets}/")
    else:  # confined again, as intake checked it: it may be a link leading out by now
        problems += confined_dataset(run.dataset, home)[1]
    try:
        runspec.load(run.config)
    except SpecError as exc:
        problems.append(str(exc))
    if problems:
        raise RunRefused(f"run {run_id} cannot train", problems)
    return RunContext(run.id, run.run_id, run.version, run.config, dataset, models, home)


class Progress:
    """Throttled progress on the run row, for `oneseekctl status` and the admin panel."""

    def __init__(self, engine: Engine, run_pk: int) -> None:
        self.engine = engine
        self.run_pk = run_pk
        self.attempt = this_attempt()
        self._last = 0.0
        self._logged: float | None = None

    def report(self, data: dict[str, Any], *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < PROGRESS_SECONDS:
            return
        self._last = now
        if data.get("step") is not None and (
            self._logged is None or now - self._logged >= PROGRESS_LOG_SECONDS
        ):
            self._logged = now
            log.info("progress", **{k: data[k] for k in (*LOGGED, *LOGGED_PHASE) if k in data})
        with write_session(self.engine) as session:
            # a trainer whose run was taken over stops here, before its next checkpoint
            queue.check_claim(session, self.run_pk, self.attempt, by="trainer")
            run = session.get_one(Run, self.run_pk)
            run.progress = {**data, "updated_at": utc_text(utcnow())}


def training_row(engine: Engine, run_pk: int, key: str, position: int) -> ModelTraining:
    with write_session(engine) as session:
        row = session.scalars(
            select(ModelTraining).where(
                ModelTraining.run_id == run_pk, ModelTraining.model_key == key
            )
        ).first()
        if row is None:
            row = ModelTraining(
                run_id=run_pk,
                model_key=key,
                position=position,
                state="pending",
                epochs_done=0,
                steps=0,
                tokens=0,
                seconds=0.0,
            )
            session.add(row)
            session.flush()
        return row


def update_training(engine: Engine, row_id: int, **values: Any) -> None:
    with write_session(engine) as session:
        row = session.get_one(ModelTraining, row_id)
        for name, value in values.items():
            setattr(row, name, value)
