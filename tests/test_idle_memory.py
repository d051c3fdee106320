"""What keeps an idle daemon's memory down once its catalog is large (bench/idle.py measures the
resident total; these are the mechanisms): the catalog writes a scan a page at a time, a JSON
file is read by what it holds, not by its bound, and the catalog keeps only what it needs
between scans."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from oneseekd import allocator, boundedjson
from oneseekd.catalog.scan import Found, Root, ScanResult
from oneseekd.catalog.store import PAGE, reconcile
from oneseekd.db.models import BaseModel, CatalogEvent


def peak_bytes(work: Callable[[], Any]) -> int:
    """The most memory Python held at once while `work` ran, above what it held before."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        work()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def scan_of(root: Path, count: int, state: str, start: int = 0) -> ScanResult:
    """A scan that found `count` models (no folders: reconcile reads only what Found says)."""
    base = Root(root, "base_models")
    result = ScanResult()
    for i in range(start, start + count):
        folder = root / f"Synthetic-Model-{i:05d}"
        result.models[f"synthetic-model-{i:05d}"] = Found(
            key=f"synthetic-model-{i:05d}",
            folder=folder,
            path=folder,
            root=base,
            state=state,
            reason=None if state == "ready" else "changed 0.1s ago; waiting 2s for the copy",
            detected_name=f"Synthetic-Model-{i:05d}",
            model_type="llama",
            architectures=("LlamaForCausalLM",),
            parameter_count=64,
            size_bytes=256,
            weight_format="safetensors",
            fingerprint=f"{i:064x}",
        )
    return result


def test_a_scan_is_written_a_page_at_a_time_so_its_peak_does_not_grow_with_the_catalog(
    engine: Engine, tmp_path: Path
) -> None:
    """Reading the whole catalog as ORM objects and writing it in one INSERT made a scan's peak
    grow with the catalog (8 MB at 1,000 models, kept resident by the idle daemon). Written a
    page at a time, each model adds only its change to the peak, as a new row, as a changed
    row and as a row gone missing."""
    small, large = 2 * PAGE, 10 * PAGE
    peaks: dict[str, list[int]] = {"added": [], "changed": [], "missing": []}
    for n, offset in ((small, 0), (large, 100_000)):
        host = f"host-{n}"
        incomplete = scan_of(tmp_path, n, "incomplete", offset)
        ready = scan_of(tmp_path, n, "ready", offset)
        peaks["added"].append(peak_bytes(partial(reconcile, engine, incomplete, host=host)))
        peaks["changed"].append(peak_bytes(partial(reconcile, engine, ready, host=host)))
        empty = ScanResult()
        peaks["missing"].append(peak_bytes(partial(reconcile, engine, empty, host=host)))
        with engine.connect() as conn:
            rows = conn.execute(
                select(BaseModel.state, func.count())
                .where(BaseModel.host == host)
                .group_by(BaseModel.state)
            ).all()
            events = conn.execute(
                select(CatalogEvent.event, func.count())
                .join(BaseModel, BaseModel.id == CatalogEvent.model_id)
                .where(BaseModel.host == host)
                .group_by(CatalogEvent.event)
            ).all()
        assert dict(rows) == {"missing": n}
        assert dict(events) == {"added": n, "state_changed": n, "missing": n}
    for what, (at_small, at_large) in peaks.items():
        # what each model adds is its change for the log (a few hundred bytes), not its row
        # as an object and its place in one giant statement (3.4 to 6.3 KB before)
        per_model = (at_large - at_small) / (large - small)
        assert per_model < 1500, (what, at_small, at_large)


def test_a_rescan_keeps_what_the_operator_set_and_reports_each_change_once(
    engine: Engine, tmp_path: Path
) -> None:
    """The bulk UPDATE writes the scan's columns only: a display name the operator set and
    `enabled` survive it, one that was never renamed follows the folder's detected name."""
    first = scan_of(tmp_path, 3, "incomplete")
    reconcile(engine, first, host="h")
    with engine.begin() as conn:
        conn.execute(
            BaseModel.__table__.update()
            .where(BaseModel.key == "synthetic-model-00000")
            .values(display_name="Operator's name", enabled=False)
        )
    second = scan_of(tmp_path, 3, "ready")
    renamed = second.models["synthetic-model-00001"]
    second.models["synthetic-model-00001"] = replace(renamed, detected_name="Renamed Upstream")
    done = reconcile(engine, second, host="h")
    assert sorted((c.key, c.event, c.old_state, c.new_state) for c in done.changes) == [
        (f"synthetic-model-0000{i}", "state_changed", "incomplete", "ready") for i in range(3)
    ]
    with engine.connect() as conn:
        shown = dict(conn.execute(select(BaseModel.key, BaseModel.display_name)).all())
        enabled = dict(conn.execute(select(BaseModel.key, BaseModel.enabled)).all())
    assert shown["synthetic-model-00000"] == "Operator's name"
    assert enabled["synthetic-model-00000"] is False
    assert shown["synthetic-model-00001"] == "Renamed Upstream"
    assert done.total == 3
    assert reconcile(engine, second, host="h").changes == []  # nothing changed: nothing written


@pytest.mark.parametrize("size", [0, 1000, 64 * 1024, 64 * 1024 + 7, 200_000])
def test_reading_a_file_under_a_bound_takes_what_it_holds_up_to_one_byte_past_it(
    tmp_path: Path, size: int
) -> None:
    path = tmp_path / "f"
    path.write_bytes(bytes(range(256)) * (size // 256) + bytes(size % 256))
    with path.open("rb") as fh:
        assert boundedjson.read_at_most(fh, 100_000) == path.read_bytes()[:100_001]


def test_a_small_json_file_is_read_without_allocating_its_bound(tmp_path: Path) -> None:
    """`fh.read(limit + 1)` allocates limit + 1 bytes before reading: 4 MB for every 1 KB
    config.json a catalog scan reads."""
    path = tmp_path / "config.json"
    path.write_text('{"model_type": "llama", "hidden_size": 64}')
    bound = 4 * 1024 * 1024
    assert boundedjson.read(path, max_bytes=bound)["model_type"] == "llama"
    assert peak_bytes(lambda: boundedjson.read(path, max_bytes=bound)) < 256 * 1024


def test_the_heap_is_given_back_where_the_c_library_can() -> None:
    """glibc has malloc_trim (this project's machines and CI); elsewhere nothing is called."""
    maps = Path("/proc/self/maps")
    if not maps.exists() or "libc.so.6" not in maps.read_text():
        pytest.skip("not glibc")
    assert allocator.give_back() is True
