"""Whatever arrives, the intake answers with a verdict and never raises."""

from __future__ import annotations

import json

import pytest
from homes import training_home
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oneseekd.catalog.live import Catalog
from oneseekd.catalog.scan import model_roots
from oneseekd.config import load_config
from oneseekd.db.engine import make_engine
from oneseekd.db.migrate import upgrade
from oneseekd.intake.accept import Intake

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=20), children, max_size=5)
    ),
    max_leaves=30,
)
field_names = st.sampled_from(
    [
        "base_models",
        "baseModels",
        "dataset",
        "version",
        "epochs",
        "batch_size",
        "learning_rate",
        "lora",
        "per_model",
        "request_id",
        "priority",
        "seed",
        "max_seq_len",
    ]
)
near_requests = st.dictionaries(field_names, json_values, max_size=8)


@pytest.fixture(scope="module")
def intake(tmp_path_factory: pytest.TempPathFactory) -> Intake:
    root = tmp_path_factory.mktemp("prop")
    home = training_home(root / "home")
    config = load_config(home, env={})
    config.home.ensure()
    engine = make_engine(config.db_url)
    upgrade(engine)
    Catalog(engine, model_roots(config), settle=0).full_scan()
    return Intake(engine, config.home)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_json_value_gets_a_verdict(intake: Intake, data: st.DataObject) -> None:
    value = data.draw(json_values | near_requests)
    raw = json.dumps(value, allow_nan=True).encode()
    verdict = intake.take_bytes(raw, source="file", source_name="p.json")
    assert verdict.status in ("queued", "rejected", "duplicate")
    assert verdict.accepted or verdict.problems


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.binary(max_size=300), name=st.text(max_size=30))
def test_any_bytes_get_a_verdict(intake: Intake, raw: bytes, name: str) -> None:
    verdict = intake.take_bytes(raw, source="file", source_name=name)
    assert verdict.status in ("queued", "rejected", "duplicate")
