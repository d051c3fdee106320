from __future__ import annotations

from pathlib import Path

import pytest

from oneseekd.config import (
    DEFAULT_RESCAN_INTERVAL_SECONDS,
    DEFAULT_SETTLE_SECONDS,
    load_config,
)
from oneseekd.errors import ConfigError


def test_defaults_without_a_config_file(tmp_path: Path) -> None:
    cfg = load_config(tmp_path, env={})
    assert cfg.home.root == tmp_path.resolve()
    assert cfg.db_url == f"sqlite:///{tmp_path.resolve()}/oneseek.db"
    assert cfg.catalog.settle_seconds == DEFAULT_SETTLE_SECONDS
    assert cfg.catalog.rescan_interval_seconds == DEFAULT_RESCAN_INTERVAL_SECONDS
    assert cfg.log_level == "info"


def test_home_and_db_url_come_from_the_environment(tmp_path: Path) -> None:
    cfg = load_config(
        None, env={"ONESEEK_HOME": str(tmp_path), "ONESEEK_DB_URL": "sqlite:////srv/x.db"}
    )
    assert cfg.home.root == tmp_path.resolve()
    assert cfg.db_url == "sqlite:////srv/x.db"
    # a flag beats the environment
    assert load_config(tmp_path, "sqlite:///y.db", env={"ONESEEK_DB_URL": "z://"}).db_url == (
        "sqlite:///y.db"
    )


def test_missing_home_names_the_fix() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, env={})
    assert "pass --home DIR or set ONESEEK_HOME=DIR" in str(err.value)


def test_toml_settings_are_read(tmp_path: Path) -> None:
    extra = tmp_path / "hub"
    extra.mkdir()
    (tmp_path / "oneseekd.toml").write_text(
        'log_level = "DEBUG"\n[catalog]\nsettle_seconds = 0.5\nrescan_interval_seconds = 60\n'
        'extra_roots = ["hub"]\n'
    )
    cfg = load_config(tmp_path, env={})
    assert cfg.log_level == "debug"
    assert cfg.catalog.settle_seconds == 0.5
    assert cfg.catalog.rescan_interval_seconds == 60.0
    assert cfg.catalog.extra_roots == (tmp_path.resolve() / "hub",)


def test_a_bad_config_is_refused_with_every_problem_listed(tmp_path: Path) -> None:
    (tmp_path / "oneseekd.toml").write_text(
        'log_level = "loud"\nworkers = 4\n[catalog]\nsettle_seconds = -1\n'
        'rescan_interval_seconds = "often"\nextra_roots = ["/nonexistent/hub"]\n'
    )
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path, env={})
    assert err.value.problems == [
        "oneseekd.toml: unknown setting 'workers' "
        "(known: catalog, certify, hub, intake, log_level, metrics, trainer)",
        "log_level must be one of debug, info, warning, error, got 'loud'",
        "catalog.settle_seconds must be at least 0, got -1",
        "catalog.rescan_interval_seconds must be a number of seconds, got 'often'",
        "catalog.extra_roots: '/nonexistent/hub' is not a folder (/nonexistent/hub); "
        "create it or remove it from the list",
    ]


def test_invalid_toml_is_refused_with_the_parser_position(tmp_path: Path) -> None:
    (tmp_path / "oneseekd.toml").write_text("[catalog\nsettle_seconds = 1\n")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path, env={})
    assert "oneseekd.toml is not valid TOML" in str(err.value)
    assert "line 1" in str(err.value)


def test_bad_environment_log_level_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path, env={"ONESEEK_LOG_LEVEL": "chatty"})
    assert err.value.problems == [
        "ONESEEK_LOG_LEVEL must be one of debug, info, warning, error, got 'chatty'"
    ]


def test_trainer_threads_default_to_torch_s_own_choice_and_are_read(tmp_path: Path) -> None:
    assert load_config(tmp_path, env={}).trainer.threads == 0
    (tmp_path / "oneseekd.toml").write_text("[trainer]\nthreads = 4\n")
    assert load_config(tmp_path, env={}).trainer.threads == 4


@pytest.mark.parametrize("value", ["-1", '"2"', "true", "1.5"])
def test_trainer_threads_must_be_a_whole_number(tmp_path: Path, value: str) -> None:
    (tmp_path / "oneseekd.toml").write_text(f"[trainer]\nthreads = {value}\n")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path, env={})
    shown = {"-1": "-1", '"2"': "'2'", "true": "True", "1.5": "1.5"}[value]
    assert err.value.problems == [
        f"trainer.threads must be a whole number of CPU threads (0: torch's default), got {shown}"
    ]


def test_make_current_defaults_to_true_and_must_be_a_boolean(tmp_path: Path) -> None:
    assert load_config(tmp_path, env={}).certify.make_current is True
    (tmp_path / "oneseekd.toml").write_text("[certify]\nmake_current = false\n")
    assert load_config(tmp_path, env={}).certify.make_current is False
    (tmp_path / "oneseekd.toml").write_text('[certify]\nmake_current = "no"\n')
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, env={})
    assert info.value.problems == ["certify.make_current must be true or false, got 'no'"]


def test_hub_endpoint_defaults_to_hf_endpoint_then_the_hub(tmp_path: Path) -> None:
    assert load_config(tmp_path, env={}).hub.endpoint == "https://huggingface.co"
    assert load_config(tmp_path, env={}).hub.offline is False
    mirror = {"HF_ENDPOINT": "http://mirror.local:8080/"}
    assert load_config(tmp_path, env=mirror).hub.endpoint == "http://mirror.local:8080"
    # the file wins over the environment
    (tmp_path / "oneseekd.toml").write_text('[hub]\nendpoint = "https://hf.internal"\n')
    assert load_config(tmp_path, env=mirror).hub.endpoint == "https://hf.internal"


def test_hub_offline_is_set_by_the_file_or_hf_hub_offline(tmp_path: Path) -> None:
    assert load_config(tmp_path, env={"HF_HUB_OFFLINE": "1"}).hub.offline is True
    (tmp_path / "oneseekd.toml").write_text("[hub]\noffline = true\n")
    assert load_config(tmp_path, env={}).hub.offline is True


def test_bad_hub_settings_are_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "oneseekd.toml").write_text('[hub]\nendpoint = "mirror"\nofline = true\n')
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path, env={"HF_ENDPOINT": "also bad"})
    text = str(err.value)
    assert "hub.endpoint must be the URL of the Hub or of a mirror" in text
    assert "unknown setting 'ofline' (did you mean 'offline'?)" in text
