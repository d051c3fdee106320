"""Catalog rows other programs wrote: only rows the scan could have written are ever used.

The admin panel (or anything with the database file) can write `base_models`. A key that is
not a normalized name would end up in checkpoint and artifact paths, and a path outside the
model roots is a folder the scan never found: intake refuses such a row, and the trainer
checks again before it opens anything.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from homes import open_home, request, training_home
from modelfactory import make_model
from sqlalchemy import Engine, select

from oneseekd.catalog.live import Catalog
from oneseekd.catalog.query import home_roots, untrusted_problem
from oneseekd.catalog.scan import model_roots
from oneseekd.config import Config
from oneseekd.db.engine import read_session
from oneseekd.db.models import BaseModel
from oneseekd.intake.accept import Intake
from oneseekd.trainer.context import RunRefused, load_context

NOT_SCANNED = "another program wrote this row, and it is never used"


def sql(config: Config, statement: str, *args: object) -> None:
    con = sqlite3.connect(config.home.db_file)
    con.execute(statement, args)
    con.commit()
    con.close()


def qwen(engine: Engine) -> BaseModel:
    with read_session(engine) as session:
        return session.scalars(select(BaseModel).where(BaseModel.key == "qwen-2-5-7b")).one()


@pytest.fixture
def home(tmp_path: Path) -> tuple[Config, Engine]:
    config, engine = open_home(training_home(tmp_path / "home"))
    yield config, engine
    engine.dispose()


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("{outside}", "outside"),
        ("models/oneseek-7b-zero/base_models/Qwen-2.5-7B/../../../../../outside", "climbs out"),
        ("models/oneseek-7b-zero/lora_adapters", "oneseekd's own folder"),
        ("models/oneseek-certified/run-1", "oneseekd's own folder"),
        ("models/oneseek-7b-zero/base_models", "a root itself"),
        ("models", "a root itself"),
        ("relative/Qwen-2.5-7B", "relative"),
        ("models/oneseek-7b-zero/base_models/Qwen\x00", "a NUL byte"),
    ],
)
def test_a_row_whose_path_the_scan_never_found_is_untrusted(
    home: tuple[Config, Engine], tmp_path: Path, path: str, why: str
) -> None:
    config, engine = home
    (tmp_path / "outside").mkdir()
    row = qwen(engine)
    assert untrusted_problem(row, model_roots(config)) is None
    if path == "{outside}":
        row.path = str(tmp_path / "outside")
    elif path.startswith("relative"):
        row.path = path
    else:
        row.path = str(config.home.root / path)
    assert untrusted_problem(row, model_roots(config)) == (
        f"qwen-2-5-7b, whose path {row.path!r} is outside the model roots; {NOT_SCANNED}"
    ), why


@pytest.mark.parametrize("key", ["x/../../tmp/pwned", "Qwen-2.5-7B", "", "-qwen", "qwen 7b"])
def test_a_row_whose_key_is_not_a_normalized_name_is_untrusted(
    home: tuple[Config, Engine], key: str
) -> None:
    config, engine = home
    row = qwen(engine)
    row.key = key
    assert untrusted_problem(row, model_roots(config)) == (
        f"{key!r}, which is not a normalized name (not a catalog key); {NOT_SCANNED}"
    )


def test_a_model_in_a_configured_extra_root_is_trusted_by_intake_and_trainer(
    tmp_path: Path,
) -> None:
    root = training_home(tmp_path / "home")
    extra = tmp_path / "hub"
    make_model(extra, "Extra-Model")
    toml = root / "oneseekd.toml"
    toml.write_text(
        toml.read_text().replace("[catalog]\n", f"[catalog]\nextra_roots = ['{extra}']\n")
    )
    config, engine = open_home(root)
    try:
        assert [r.kind for r in home_roots(config.home)] == ["base_models", "models", "extra"]
        verdict = Intake(engine, config.home).take_bytes(
            json.dumps(request(base_models=["extra-model"])).encode(), source="submit"
        )
        assert verdict.status == "queued", verdict.problems
        assert verdict.run_id is not None
        context = load_context(engine, config.home, verdict.run_id)
        assert [(m.key, m.path) for m in context.models] == [("extra-model", extra / "Extra-Model")]
        # the same row, to an intake that knows only the home's own roots: refused
        own = Intake(engine, config.home, roots=model_roots(config)[:2])
        refused = own.take_bytes(
            json.dumps(request(base_models=["extra-model"], seed=2)).encode(), source="submit"
        )
        assert refused.problems == [
            f"base_models: 'extra-model' resolves to extra-model, whose path "
            f"{str(extra / 'Extra-Model')!r} is outside the model roots; {NOT_SCANNED}"
        ]
    finally:
        engine.dispose()


def test_the_trainer_refuses_a_row_moved_outside_the_roots_after_intake(
    home: tuple[Config, Engine], tmp_path: Path
) -> None:
    config, engine = home
    verdict = Intake(engine, config.home).take_bytes(
        json.dumps(request(base_models=["qwen"])).encode(), source="submit"
    )
    assert verdict.run_id is not None
    outside = make_model(tmp_path / "outside", "Stolen")
    sql(config, "UPDATE base_models SET path = ? WHERE key = 'qwen-2-5-7b'", str(outside))
    with pytest.raises(RunRefused) as err:
        load_context(engine, config.home, verdict.run_id)
    assert err.value.problems == [
        f"base model qwen-2-5-7b, whose path {str(outside)!r} is outside the model roots; "
        f"{NOT_SCANNED}"
    ]


def test_a_full_scan_rewrites_the_columns_another_program_made_unreadable(
    home: tuple[Config, Engine],
) -> None:
    config, engine = home
    before = qwen(engine)
    sql(
        config,
        "UPDATE base_models SET architectures = 'LlamaForCausalLM', updated_at = 'yesterday', "
        "first_seen_at = 'long ago' WHERE key = 'qwen-2-5-7b'",
    )
    Catalog(engine, model_roots(config), settle=0).full_scan()
    after = qwen(engine)
    assert after.architectures == before.architectures and after.architectures
    assert after.updated_at is not None and after.first_seen_at is not None
    assert after.state_changed_at == before.state_changed_at
    con = sqlite3.connect(config.home.db_file)
    [(architectures,)] = con.execute(
        "SELECT architectures FROM base_models WHERE key = 'qwen-2-5-7b'"
    ).fetchall()
    con.close()
    assert json.loads(architectures) == before.architectures
