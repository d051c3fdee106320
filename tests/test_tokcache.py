"""The tokenization cache's own rules (issue 24): an entry is exactly what was stored, whole or
absent; a damaged one is removed and never trusted; the cache keeps to its bound, least
recently used first; the key changes with everything that decides the encoding."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs
from trainhomes import cached_tiny

from oneseekd.trainer import tokcache
from oneseekd.trainer.tokcache import META, Rows, TokenCache, key

IDS = [[1, 5, 9, 2], [1, 7], [], [1, 300000, 3]]
MASKS = [[0, 1, 1, 1], [0, 1], [], [0, 0, 1]]
NBYTES = [[0, 4, 3, 1], [0, 2], [], [0, 9, 1]]


def stored(tmp_path: Path, limit: int = 1 << 30) -> TokenCache:
    cache = TokenCache(tmp_path / "cache", limit)
    cache.store("a" * 64, {"ids": IDS, "masks": MASKS, "nbytes": NBYTES}, truncated=2)
    return cache


def test_an_entry_loads_as_it_was_stored(tmp_path: Path) -> None:
    entry = stored(tmp_path).load("a" * 64)
    assert entry is not None and entry.truncated == 2
    assert list(entry.fields["ids"] or []) == IDS
    assert list(entry.fields["masks"] or []) == MASKS
    assert list(entry.fields["nbytes"] or []) == NBYTES
    rows = entry.fields["ids"]
    assert isinstance(rows, Rows) and isinstance(rows.values, np.memmap)
    assert rows.lengths() == [4, 2, 0, 3]
    picked = rows.take([3, 0])
    assert list(picked) == [IDS[3], IDS[0]] and picked.lengths() == [3, 4]
    assert picked[-1] == IDS[0] and rows[1:3] == IDS[1:3]


def test_an_absent_field_stays_absent(tmp_path: Path) -> None:
    cache = TokenCache(tmp_path, 1 << 30)
    cache.store("b" * 64, {"ids": IDS, "masks": None}, truncated=0)
    entry = cache.load("b" * 64)
    assert entry is not None and entry.fields["masks"] is None


def test_a_damaged_entry_is_removed_and_never_trusted(tmp_path: Path) -> None:
    cache = stored(tmp_path)
    folder = cache.root / ("a" * 64)
    values = folder / "masks.values.npy"
    data = bytearray(values.read_bytes())
    data[-1] ^= 1  # one label flipped
    values.write_bytes(bytes(data))
    assert cache.load("a" * 64) is None
    assert not folder.exists()
    cache = stored(tmp_path)
    (cache.root / ("a" * 64) / META).write_text("{")  # a torn meta
    assert cache.load("a" * 64) is None
    assert cache.load("c" * 64) is None  # never stored


def test_a_failed_write_leaves_no_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = TokenCache(tmp_path, 1 << 30)

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "save", full)
    with capture_logs() as logs:
        cache.store("a" * 64, {"ids": IDS}, truncated=0)
    assert cache.load("a" * 64) is None
    [told] = [e for e in logs if e["event"] == "tokenization_cache_not_written"]
    assert "No space left" in told["error"] and "cache_bytes = 0" in told["text"]
    assert list(cache.root.iterdir()) == []


def test_the_least_recently_used_entries_are_evicted_to_the_bound(tmp_path: Path) -> None:
    cache = TokenCache(tmp_path, 1 << 30)
    for n, name in enumerate("abc"):
        cache.store(name * 64, {"ids": IDS, "masks": MASKS}, truncated=0)
        meta = cache.root / (name * 64) / META
        os.utime(meta, (time.time() - 100 + n, time.time() - 100 + n))
    one = cache.entries()[0][1]
    assert cache.load("a" * 64) is not None  # the oldest, used now
    cache.limit = 2 * one
    cache.store("d" * 64, {"ids": IDS, "masks": MASKS}, truncated=0)
    left = sorted(folder.name[0] for folder, _, _ in cache.entries())
    assert left == ["a", "d"]
    assert cache.size() == (2, 2 * one)
    TokenCache(tmp_path, 0).store("e" * 64, {"ids": IDS}, truncated=0)  # 0: keep nothing
    assert cache.load("e" * 64) is None


def test_the_key_follows_everything_that_decides_the_encoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(cached_tiny(tmp_path / "models", "Tiny-Llama", "llama"), folder)
    options = {"max_seq_len": 64, "truncation_side": "right", "train_on_prompt": False}
    first = key("0" * 64, folder, options)
    assert key("0" * 64, folder, dict(reversed(options.items()))) == first
    assert key("1" * 64, folder, options) != first
    assert key("0" * 64, folder, {**options, "max_seq_len": 65}) != first
    assert key("0" * 64, folder, {**options, "train_on_prompt": True}) != first
    config = folder / "tokenizer_config.json"
    saved = config.read_text()
    config.write_text(json.dumps({**json.loads(saved), "chat_template": "{{ messages }}"}))
    assert key("0" * 64, folder, options) != first
    config.write_text(saved)
    assert key("0" * 64, folder, options) == first
    monkeypatch.setattr(tokcache, "code_hash", lambda: "other labelling code")
    assert key("0" * 64, folder, options) != first
