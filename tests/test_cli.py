from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

from click.testing import CliRunner
from daemon import DaemonProcess
from homes import ctl_text
from modelfactory import make_model

from oneseekd.cli import main
from oneseekd.db.migrate import head_revision


def seed(home: Path) -> None:
    # no settle time: the folders below count as still the moment they are written
    (home / "oneseekd.toml").write_text("[catalog]\nsettle_seconds = 0\n")
    base = home / "models" / "oneseek-7b-zero" / "base_models"
    for name in ("Mistral-7B-Instruct", "llama-2-7b", "KB-Llama-3.1-8B-Swedish"):
        make_model(base, name)
    broken = make_model(home / "models", "broken-model")
    (broken / "config.json").write_text("[]")
    # a home has its database (the daemon's start or `db upgrade` makes it): a read command
    # never makes one
    code, _, err = ctl_text(home, "db", "upgrade")
    assert code == 0, err


def test_models_json_lists_the_catalog_without_a_daemon(home: Path) -> None:
    seed(home)
    code, out, _ = ctl_text(home, "models", "--json")
    assert code == 0
    models = {m["key"]: m for m in json.loads(out)}
    assert sorted(models) == [
        "broken-model",
        "kb-llama-3-1-8b-swedish",
        "llama-2-7b",
        "mistral-7b-instruct",
    ]
    assert models["llama-2-7b"]["state"] == "ready"
    assert models["llama-2-7b"]["parameter_count"] == 49216
    assert models["broken-model"]["state"] == "invalid"
    assert models["broken-model"]["state_reason"] == "config.json is not a JSON object"


def test_models_table_shows_states_and_reasons(home: Path) -> None:
    seed(home)
    code, out, _ = ctl_text(home, "models")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == [
        "KEY",
        "NAME",
        "STATE",
        "ARCH",
        "PARAMS",
        "SIZE",
        "TOKENIZER",
        "PATH",
    ]
    assert any(
        line.startswith("llama-2-7b ") and " ready " in line and "49.22K" in line for line in lines
    )
    assert "broken-model: config.json is not a JSON object" in lines


def test_resolve_names_the_strategy(home: Path) -> None:
    seed(home)
    code, out, _ = ctl_text(home, "resolve", "mistral", "llama-2", "--json")
    assert code == 0
    assert [(r["requested"], r["key"], r["strategy"]) for r in json.loads(out)] == [
        ("mistral", "mistral-7b-instruct", "containment"),
        ("llama-2", "llama-2-7b", "containment"),
    ]


def test_resolve_refuses_ambiguity_naming_both_candidates(home: Path) -> None:
    seed(home)
    code, _, err = ctl_text(home, "resolve", "llama")
    assert code == 1
    assert err.strip() == (
        "Error: model name 'llama' is ambiguous (containment match): it matches "
        "kb-llama-3-1-8b-swedish, llama-2-7b; use the full key of one of them"
    )


def test_resolve_refuses_an_invalid_or_disabled_model(home: Path) -> None:
    seed(home)
    ctl_text(home, "models")
    con = sqlite3.connect(home / "oneseek.db")
    con.execute("UPDATE base_models SET enabled = 0 WHERE key = 'llama-2-7b'")
    con.commit()
    code, _, err = ctl_text(home, "resolve", "broken", "llama-2-7b")
    assert code == 1
    assert err.splitlines() == [
        "Error: 2 of the requested model names cannot be used",
        "  - 'broken' resolves to broken-model is invalid: config.json is not a JSON object",
        "  - 'llama-2-7b' resolves to llama-2-7b is disabled in the catalog; enable it "
        "(admin panel) to train it",
    ]


def test_status_without_and_with_the_daemon(home: Path) -> None:
    seed(home)
    code, out, _ = ctl_text(home, "status", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["daemon"]["running"] is False
    assert data["catalog"]["models"] == 4
    assert data["catalog"]["by_state"] == {"ready": 3, "incomplete": 0, "invalid": 1, "missing": 0}
    proc = DaemonProcess(home)
    try:
        proc.wait_event("daemon_ready")
        code, out, _ = ctl_text(home, "status", "--json")
        data = json.loads(out)
        assert data["daemon"]["running"] is True
        assert data["daemon"]["pid"] == proc.proc.pid
        assert data["catalog"]["source"] == "kept by oneseekd"
    finally:
        proc.kill()


def test_db_upgrade_by_hand(home: Path) -> None:
    head = head_revision()
    code, out, _ = ctl_text(home, "db", "upgrade")
    assert (code, out.strip()) == (0, f"Upgraded the database from empty to {head}.")
    code, out, _ = ctl_text(home, "db", "upgrade", "--json")
    assert json.loads(out) == {"from": head, "to": head, "changed": False}


def test_an_outdated_database_is_left_to_db_upgrade(home: Path) -> None:
    ctl_text(home, "db", "upgrade")
    con = sqlite3.connect(home / "oneseek.db")
    con.execute("DELETE FROM alembic_version")
    con.execute("DROP TABLE daemons")
    con.commit()
    code, _, err = ctl_text(home, "status")
    assert code == 3
    assert "holds tables but no oneseekd revision" in err


def test_no_home_is_an_error_naming_the_fix() -> None:
    result = CliRunner().invoke(main, ["status"], env={"ONESEEK_HOME": None})
    assert result.exit_code == 78  # configuration (docs/interface.md, "Exit codes")
    assert "pass --home DIR or set ONESEEK_HOME=DIR" in result.stderr


def test_oneseekctl_never_imports_torch(home: Path) -> None:
    seed(home)
    probe = textwrap.dedent("""
        import sys
        from oneseekd.cli import main
        for args in (["status"], ["models", "--json"], ["resolve", "mistral"]):
            try:
                main(["--home", sys.argv[1], *args])
            except SystemExit as exc:
                assert exc.code in (0, None), (args, exc.code)
        heavy = sorted(m for m in ("torch", "transformers", "peft") if m in sys.modules)
        print("HEAVY=" + ",".join(heavy))
    """)
    done = subprocess.run(
        [sys.executable, "-c", probe, str(home)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "ONESEEK_HOME": ""},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "HEAVY="
