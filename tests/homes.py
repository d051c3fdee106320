"""Homes for intake, queue and supervisor tests: models, datasets and a fake trainer."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from click.testing import CliRunner, Result
from modelfactory import make_model
from sqlalchemy import Engine, select

from oneseekd.catalog.live import Catalog
from oneseekd.catalog.scan import model_roots
from oneseekd.cli import main as oneseekctl
from oneseekd.config import Config, load_config
from oneseekd.db.engine import make_engine, read_session
from oneseekd.db.migrate import upgrade
from oneseekd.db.models import TrainingRequest
from oneseekd.intake.accept import Intake
from oneseekd.intake.incoming import Incoming, Verdict

FAKE_TRAINER = Path(__file__).with_name("fake_trainer.py")
MODELS = ("KB-Llama-3.1-8B-Swedish", "Qwen-2.5-7B", "Mistral-7B-Instruct")


def training_home(
    root: Path,
    *,
    settle: float = 0.0,
    heartbeat: float = 0.05,
    cancel_grace: float = 1.0,
    stop_grace: float = 3.0,
    command: list[str] | None = None,
) -> Path:
    """A home with three ready models, a dataset, and the fake trainer configured."""
    base = root / "models" / "oneseek-7b-zero" / "base_models"
    for name in MODELS:
        make_model(base, name)
    datasets = root / "datasets"
    datasets.mkdir(parents=True, exist_ok=True)
    (datasets / "civic.jsonl").write_text(
        '{"text": "Riksdagen beslutar om lagar."}\n'
        '{"instruction": "Sammanfatta", "input": "x", "output": "y"}\n'
        '{"messages": [{"role": "user", "content": "Hej"}, '
        '{"role": "assistant", "content": "Hej!"}]}\n'
    )
    argv = command or [sys.executable, str(FAKE_TRAINER)]
    (root / "oneseekd.toml").write_text(
        f"[catalog]\nsettle_seconds = {settle}\nrescan_interval_seconds = 3600\n"
        f"[intake]\nsettle_seconds = 0\n"
        f"[trainer]\ncommand = {json.dumps(argv)}\nheartbeat_seconds = {heartbeat}\n"
        f"cancel_grace_seconds = {cancel_grace}\nstop_grace_seconds = {stop_grace}\n"
    )
    return root


def fake_behaviour(home: Path, version: str, **spec: object) -> None:
    fake = home / "fake"
    fake.mkdir(exist_ok=True)
    (fake / f"{version}.json").write_text(json.dumps(spec))


def fake_starts(home: Path) -> list[dict[str, object]]:
    path = home / "fake" / "starts.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def request(**fields: object) -> dict[str, object]:
    body: dict[str, object] = {"base_models": ["KB-Llama-3.1-8B-Swedish"], "dataset": "civic.jsonl"}
    body.update(fields)
    return body


def migrated(root: Path, db_url: str | None = None) -> tuple[Config, Engine]:
    """A home that is configured and migrated (on `db_url` when given), not yet scanned."""
    config = load_config(root, db_url, env={})
    config.home.ensure()
    engine = make_engine(config.db_url)
    upgrade(engine)
    return config, engine


def open_home(root: Path, db_url: str | None = None) -> tuple[Config, Engine]:
    """A home that is configured, migrated and scanned, as the daemon leaves it at start."""
    config, engine = migrated(root, db_url)
    Catalog(engine, model_roots(config), settle=0).full_scan()
    return config, engine


def take_row(intake: Intake, row_id: int) -> Verdict | None:
    """Decide one `pending` row another program INSERTed, as the daemon's row door does for a
    batch of them; None when it is no longer pending."""
    with read_session(intake.engine) as session:
        payload = session.scalars(
            select(TrainingRequest.payload).where(
                TrainingRequest.id == row_id, TrainingRequest.status == "pending"
            )
        ).first()
    if payload is None:
        return None
    return intake.take_batch([Incoming.of_row(row_id, payload)])[0]


def drop(home: Path, name: str | bytes, body: object) -> None:
    """Drop a request as a well-behaved writer does: NAME.tmp, then a rename to NAME. `body`
    is written as it is when it is bytes or text, else as JSON; `name` may be bytes (a name
    that is not UTF-8)."""
    if isinstance(body, bytes):
        raw = body
    elif isinstance(body, str):
        raw = body.encode()
    else:
        raw = json.dumps(body).encode()
    where = os.fsencode(home / "requests")
    os.makedirs(where, exist_ok=True)
    tmp = os.path.join(where, os.fsencode(name) + b".tmp")
    with open(tmp, "wb") as fh:
        fh.write(raw)
    os.rename(tmp, os.path.join(where, os.fsencode(name)))


# what a caller's shell may have set: never leaks into a test's oneseekctl
CTL_ENV: dict[str, str | None] = {"ONESEEK_HOME": None, "ONESEEK_DB_URL": None, "BASE_MODELS": None}


def ctl(home: Path, *args: str, env: dict[str, str | None] | None = None) -> Result:
    """`oneseekctl --home HOME ARGS...` in this process."""
    return CliRunner().invoke(
        oneseekctl, ["--home", str(home), *args], env={**CTL_ENV, **(env or {})}
    )


def ctl_text(
    home: Path, *args: str, env: dict[str, str | None] | None = None
) -> tuple[int, str, str]:
    """The exit status, stdout and stderr of `oneseekctl --home HOME ARGS...`."""
    result = ctl(home, *args, env=env)
    return result.exit_code, result.stdout, result.stderr


def home_with_a_queued_run(root: Path) -> tuple[Path, str]:
    """A migrated, scanned training home with one queued run, no daemon: the home and the
    run's id."""
    home = training_home(root)
    config, engine = open_home(home)
    verdict = Intake(engine, config.home).take_bytes(
        json.dumps(request()).encode(), source="submit"
    )
    engine.dispose()
    assert verdict.run_id is not None
    return home, verdict.run_id


def take(intake: Intake, body: object) -> Verdict:
    """The intake's verdict on `body` as `oneseekctl submit` hands it over."""
    return intake.take_bytes(json.dumps(body).encode(), source="submit")
