"""The light read path of status / models / runs / show (oneseekd/cli/read.py): what it imports,
that it reads exactly what the full path reads, and when it hands over to the full path."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from homes import ctl_text, home_with_a_queued_run, request, training_home
from modelfactory import make_model

from oneseekd.cli import main
from oneseekd.cli import read as read_module
from oneseekd.intake.accept import Intake

HEAVY = (
    "sqlalchemy",
    "sqlalchemy.orm",
    "pydantic",
    "structlog",
    "torch",
    "alembic",
    "watchdog",
    "apscheduler",
    "cryptography",
    "nacl",
)


@pytest.fixture
def queued_home(tmp_path: Path) -> tuple[Path, str]:
    """A migrated, scanned home with one queued run, no daemon."""
    return home_with_a_queued_run(tmp_path / "home")


def imported_by(home: Path, *args: str, db_url: str | None = None) -> tuple[list[str], str]:
    """The heavy modules a fresh interpreter has imported after one oneseekctl command."""
    script = textwrap.dedent(
        f"""
        import io, json, sys, contextlib
        from oneseekd.cli import main
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            try:
                main({["--home", str(home), *(["--db-url", db_url] if db_url else []), *args]!r})
            except SystemExit as exc:
                assert not exc.code, exc.code
        print(json.dumps([[m for m in {HEAVY!r} if m in sys.modules], out.getvalue()]))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    heavy, output = json.loads(done.stdout.splitlines()[-1])
    return heavy, output


@pytest.mark.parametrize(
    "args",
    [("status",), ("status", "--json"), ("models",), ("models", "--json"), ("runs",), ("show",)],
)
def test_a_read_command_imports_no_heavy_module(queued_home: tuple[Path, str], args: tuple) -> None:
    home, run_id = queued_home
    if args == ("show",):
        args = ("show", run_id)
    heavy, output = imported_by(home, *args)
    assert output  # it answered
    assert heavy == []


def test_a_writing_command_still_loads_the_full_machinery(queued_home: tuple[Path, str]) -> None:
    """The import check above can fail: `resolve` takes the full path and shows it."""
    home, _ = queued_home
    heavy, _ = imported_by(home, "resolve", "qwen")
    assert "sqlalchemy.orm" in heavy
    assert "torch" not in heavy


def _full_path_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(read_module, "_light", lambda obj, catalog: None)


@pytest.mark.parametrize(
    "args", [("status", "--json"), ("models", "--json", "--all"), ("runs", "--json"), ("show",)]
)
def test_the_light_and_the_full_path_read_the_same(
    queued_home: tuple[Path, str], monkeypatch: pytest.MonkeyPatch, args: tuple
) -> None:
    home, run_id = queued_home
    if args == ("show",):
        args = ("show", run_id, "--json")
    light = ctl_text(home, *args)
    _full_path_only(monkeypatch)
    full = ctl_text(home, *args)
    assert light[0] == full[0] == 0
    assert json.loads(light[1]) == json.loads(full[1])


def test_a_changed_model_folder_hands_over_to_the_full_scan(
    queued_home: tuple[Path, str],
) -> None:
    """With no daemon, `models` still shows a model copied in since the last scan, and a
    removed one as missing: the light path sees the folders changed and lets the full path
    record it."""
    home, _ = queued_home
    base = home / "models" / "oneseek-7b-zero" / "base_models"
    make_model(base, "Gemma-2-2B")
    heavy, output = imported_by(home, "models", "--json")
    assert "sqlalchemy.orm" in heavy  # the change was written by the full path
    assert "gemma-2-2b" in {m["key"] for m in json.loads(output)}
    heavy, output = imported_by(home, "models", "--json")
    assert heavy == []  # and the next read is light again
    assert "gemma-2-2b" in {m["key"] for m in json.loads(output)}


def test_catalog_is_current_agrees_with_the_scan(queued_home: tuple[Path, str]) -> None:
    home, _ = queued_home
    from oneseekd.cli.context import Context

    obj = Context(home=str(home), db_url=None)
    reader = read_module._light(obj, catalog=False)
    assert reader is not None
    assert read_module.catalog_is_current(obj, reader)
    weights = next((home / "models" / "oneseek-7b-zero" / "base_models").glob("*/*.safetensors"))
    weights.write_bytes(weights.read_bytes() + b"\0")  # same name, new size: a changed folder
    assert not read_module.catalog_is_current(obj, reader)


def test_an_unknown_run_is_an_error_naming_the_fix(queued_home: tuple[Path, str]) -> None:
    home, _ = queued_home
    code, _, err = ctl_text(home, "show", "run-nope")
    assert code == 1
    assert err.splitlines() == [
        "Error: no run 'run-nope'",
        "  - name a run id, a DNA, a version (v1.2), the end of either (318fcc), latest or current",
        "  - list the runs with `oneseekctl runs`",
    ]


def test_another_database_is_read_with_sqlalchemy_core_only(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL: the same queries through SQLAlchemy Core, never the ORM, and the same
    answer as the full path."""
    home = training_home(tmp_path / "home")
    config, engine = open_home_at(home, pg_url)
    verdict = Intake(engine, config.home).take_bytes(
        json.dumps(request()).encode(), source="submit"
    )
    engine.dispose()
    heavy, output = imported_by(home, "show", str(verdict.run_id), "--json", db_url=pg_url)
    assert "sqlalchemy" in heavy
    assert [m for m in heavy if m != "sqlalchemy"] == []
    light = json.loads(output)
    assert light["run_id"] == verdict.run_id
    _full_path_only(monkeypatch)
    result = CliRunner().invoke(
        main,
        ["--home", str(home), "--db-url", pg_url, "show", str(verdict.run_id), "--json"],
        env={"ONESEEK_HOME": None, "ONESEEK_DB_URL": None},
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == light


def open_home_at(home: Path, db_url: str) -> tuple:
    from oneseekd.catalog.live import Catalog
    from oneseekd.catalog.scan import model_roots
    from oneseekd.config import load_config
    from oneseekd.db.engine import make_engine
    from oneseekd.db.migrate import upgrade

    config = load_config(home, db_url, env={})
    config.home.ensure()
    engine = make_engine(db_url)
    upgrade(engine)
    Catalog(engine, model_roots(config), settle=0, host=config.catalog.host).full_scan()
    return config, engine
