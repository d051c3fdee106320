from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from homes import open_home, training_home
from pg import REQUIRE_ENV, Cluster, start_cluster
from sqlalchemy import Engine

from oneseekd.config import Config, load_config
from oneseekd.db.engine import make_engine
from oneseekd.db.migrate import upgrade
from oneseekd.intake.accept import Intake
from oneseekd.logs import ignore_library_warnings

if TYPE_CHECKING:  # trainhomes imports torch: not while conftest loads, before the filters
    from trainhomes import TinyHome


def pytest_collectstart() -> None:
    """The same list while test modules are imported (torch warns at import time), and
    bitsandbytes imported before any test module imports peft, without its Hub kernel lookup
    (oneseekd.trainer.hubless), as the trainer imports it."""
    ignore_library_warnings()
    from oneseekd.trainer.hubless import import_bitsandbytes

    import_bitsandbytes()


def pytest_runtest_setup(item: pytest.Item) -> None:
    """CI runs plain `pytest -q`: tests marked slow run only when `-m` selects them."""
    expr = item.config.option.markexpr or ""
    if item.get_closest_marker("slow") and ("slow" not in expr or "not slow" in expr):
        pytest.skip("a slow test: run with pytest -m slow")


@pytest.fixture(autouse=True)
def _quiet_library_warnings() -> None:
    """The named third-party warnings of oneseekd.logs.LIBRARY_WARNINGS, silenced in every
    test as in the trainer (inside pytest's per-test warning capture)."""
    ignore_library_warnings()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    root = tmp_path / "home"
    (root / "models" / "oneseek-7b-zero" / "base_models").mkdir(parents=True)
    return root


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Config, Engine, Intake]]:
    """homes.training_home migrated and opened, with its Intake (the intake tests' home)."""
    config, engine = open_home(training_home(tmp_path / "home"))
    yield config, engine, Intake(engine, config.home)
    engine.dispose()


@pytest.fixture
def fake_home(tmp_path: Path) -> Path:
    """homes.training_home: three fake models (real headers, zero weights), a dataset and the
    fake trainer configured; not migrated, no daemon."""
    return training_home(tmp_path / "home")


@pytest.fixture
def one(tmp_path: Path, cache: Path) -> Iterator[TinyHome]:
    """A TinyHome with a tiny Llama."""
    from trainhomes import TinyHome

    home = TinyHome(tmp_path / "home", cache, {"Tiny-Llama": "llama"})
    yield home
    home.engine.dispose()


@pytest.fixture
def two(tmp_path: Path, cache: Path) -> Iterator[TinyHome]:
    """A TinyHome with a tiny Llama and a tiny Qwen2.5."""
    from trainhomes import TinyHome

    home = TinyHome(tmp_path / "home", cache, {"Tiny-Llama": "llama", "Tiny-Qwen2.5": "qwen2"})
    yield home
    home.engine.dispose()


@pytest.fixture(scope="session")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where tiny models are built once a session (trainhomes.tiny_home copies them)."""
    return tmp_path_factory.mktemp("tiny-models")


@pytest.fixture
def config(home: Path) -> Config:
    return load_config(home, env={})


@pytest.fixture
def engine(config: Config) -> Iterator[Engine]:
    eng = make_engine(config.db_url)
    upgrade(eng)
    yield eng
    eng.dispose()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster | None]:
    """One PostgreSQL server for the session (in /tmp: the `postgres` user must reach it)."""
    root = Path(tempfile.mkdtemp(prefix="oneseek-pg-"))
    cluster = start_cluster(root)
    yield cluster
    if cluster is not None:
        cluster.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str | None:
    """None for the home's SQLite file; a fresh PostgreSQL database's URL otherwise."""
    if request.param == "sqlite":
        return None
    cluster = request.getfixturevalue("pg_cluster")
    if cluster is None:
        pytest.skip(
            "PostgreSQL is not installed (no initdb found; apt-get install postgresql); "
            f"{REQUIRE_ENV}=1 makes this an error"
        )
    return str(cluster.create_database())


@pytest.fixture
def pg_url(pg_cluster: Cluster | None) -> str:
    """A fresh PostgreSQL database, for tests that only make sense there."""
    if pg_cluster is None:
        pytest.skip(
            "PostgreSQL is not installed (no initdb found; apt-get install postgresql); "
            f"{REQUIRE_ENV}=1 makes this an error"
        )
    return pg_cluster.create_database()


@pytest.fixture
def progress_reports(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every progress report the trainer makes in this process, written to the row or not
    (its throttle)."""
    from oneseekd.trainer import context

    seen: list[dict[str, Any]] = []
    report = context.Progress.report

    def keep(self: context.Progress, data: dict[str, Any], *, force: bool = False) -> None:
        seen.append(dict(data))
        report(self, data, force=force)

    monkeypatch.setattr(context.Progress, "report", keep)
    return seen
