"""Issue 30, items 9 and 11: a read command never writes (a folder without a database is not a
home), one exit-code table, errors as JSON with --json for every command, and did-you-mean
for config keys and model names."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from homes import ctl

from oneseekd.config import load_config
from oneseekd.errors import EXIT_CODES, EXIT_CONFIG, EXIT_REFUSED, EXIT_USAGE, ConfigError
from oneseekd.naming import match_model

ROOT = Path(__file__).resolve().parent.parent

READS = [
    ("status",),
    ("status", "--json"),
    ("models",),
    ("resolve", "llama"),
    ("runs",),
    ("show", "latest"),
    ("logs", "latest"),
    ("cancel", "latest"),
    ("promote", "latest"),
    ("ledger", "verify"),
    ("submit", "--base-models", "llama", "--dataset", "d.jsonl", "--dry-run"),
    ("submit", "--base-models", "llama", "--dataset", "d.jsonl"),  # no models/: a typo
]


@pytest.mark.parametrize("args", READS, ids=" ".join)
def test_a_folder_without_a_database_is_not_a_home_and_stays_as_it_was(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    folder = tmp_path / "not-a-home"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    result = ctl(folder, *args)
    assert result.exit_code == EXIT_CONFIG, result.output
    if "--json" in args:
        error = json.loads(result.stderr)
        assert error["error"] == (
            f"{folder} is not a oneseekd home: there is no database {folder}/oneseek.db"
        )
    else:
        assert result.stderr.splitlines() == [
            f"Error: {folder} is not a oneseekd home: there is no database {folder}/oneseek.db",
            "  - check --home / ONESEEK_HOME for a typo",
            f"  - to make it a home, start oneseekd there (`oneseekd --home {folder}`) or run "
            f"`oneseekctl --home {folder} db upgrade`",
        ]
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]  # nothing written


def test_db_upgrade_and_a_submit_into_a_prepared_home_make_the_database(
    tmp_path: Path, fake_home: Path
) -> None:
    folder = tmp_path / "new"
    folder.mkdir()
    assert ctl(folder, "db", "upgrade").exit_code == 0
    assert ctl(folder, "runs").exit_code == 0
    # a home laid out for the daemon (models/ in place): submit queues into it
    result = ctl(fake_home, "submit", "--base-models", "qwen", "--dataset", "civic.jsonl")
    assert result.exit_code == 0, result.output
    assert (fake_home / "oneseek.db").is_file()


def test_with_json_every_error_is_json_on_stderr(fake_home: Path) -> None:
    ctl(fake_home, "db", "upgrade")
    refused = ctl(fake_home, "show", "nope", "--json")
    assert (refused.exit_code, refused.stdout) == (EXIT_REFUSED, "")
    assert json.loads(refused.stderr) == {
        "error": "no run 'nope'",
        "fixes": [
            "name a run id, a DNA, a version (v1.2), the end of either (318fcc), latest or current",
            "list the runs with `oneseekctl runs`",
        ],
        "exit_code": EXIT_REFUSED,
    }
    # click's own usage errors too, still with click's code
    usage = ctl(fake_home, "runs", "--state", "bogus", "--json")
    assert (usage.exit_code, usage.stdout) == (EXIT_USAGE, "")
    error = json.loads(usage.stderr)
    assert "'bogus' is not one of" in error["error"]
    assert error["fixes"] == ["see `oneseekctl runs --help`"]
    unknown = ctl(fake_home, "stauts", "--json")
    assert unknown.exit_code == EXIT_USAGE
    assert json.loads(unknown.stderr)["error"].startswith("No such command 'stauts'")
    # without --json, the same error reads as a person's
    plain = ctl(fake_home, "show", "nope")
    assert plain.stderr.startswith("Error: no run 'nope'\n")
    assert ctl(fake_home, "runs", "--state", "bogus").exit_code == EXIT_USAGE


def test_the_exit_code_table_is_documented_as_the_code_has_it() -> None:
    text = (ROOT / "docs" / "interface.md").read_text(encoding="utf-8")
    section = text[text.index("### Exit codes") :]
    rows = dict(re.findall(r"^\| (\d+) \| ([^|]+?) \|", section, re.M))
    assert {int(code): meaning for code, meaning in rows.items()} == EXIT_CODES
    assert ConfigError("x").exit_code == EXIT_CONFIG != EXIT_USAGE


def test_an_unknown_config_key_gets_a_did_you_mean(tmp_path: Path) -> None:
    (tmp_path / "oneseekd.toml").write_text("[catalog]\nsettle_second = 1\n[trainr]\n")
    with pytest.raises(ConfigError) as refused:
        load_config(tmp_path, env={})
    problems = refused.value.problems
    assert problems[0].startswith(
        "oneseekd.toml: unknown setting 'trainr' (did you mean 'trainer'?)"
    )
    assert problems[1].startswith(
        "[catalog]: unknown setting 'settle_second' (did you mean 'settle_seconds'?) (known: "
    )


def test_a_model_name_below_difflibs_cutoff_still_gets_a_did_you_mean() -> None:
    keys = ["mistral-7b-instruct", "llama-2-7b", "kb-llama-3-1-8b-swedish"]
    with pytest.raises(Exception, match=r"did you mean 'mistral-7b-instruct'\?"):
        match_model("mistrl", keys)
    with pytest.raises(Exception) as far:
        match_model("gpt", keys)
    assert "did you mean" not in str(far.value)
