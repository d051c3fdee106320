from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from oneseekd.config import Config, load_config
from oneseekd.db.engine import make_engine
from oneseekd.db.migrate import upgrade


@pytest.fixture
def home(tmp_path: Path) -> Path:
    root = tmp_path / "home"
    (root / "models" / "oneseek-7b-zero" / "base_models").mkdir(parents=True)
    return root


@pytest.fixture
def config(home: Path) -> Config:
    return load_config(home, env={})


@pytest.fixture
def engine(config: Config) -> Iterator[Engine]:
    eng = make_engine(config.db_url)
    upgrade(eng)
    yield eng
    eng.dispose()
