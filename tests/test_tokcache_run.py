"""The tokenization cache in a run (issue 24, item 2): a dataset is tokenized once per
tokenizer and options; a resume re-tokenizes nothing; the rows from the cache give the same
split, batches and DNA as rows tokenized anew; a damaged entry is rebuilt, never trusted; and
`oneseekctl status` shows the cache's size."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from trainhomes import TinyHome, stop_at

from oneseekd.trainer import setup as trainer_setup
from oneseekd.trainer.recipe import Stopped
from oneseekd.trainer.run import train_run
from oneseekd.trainer.tokcache import META


class Encodes:
    """How many dataset records the trainer encoded (setup's encode_records)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.n = 0
        real = trainer_setup.encode_records

        def counted(encoder: Any, records: Any, dataset: str, key: str) -> Any:
            self.n += len(records)
            return real(encoder, records, dataset, key)

        monkeypatch.setattr(trainer_setup, "encode_records", counted)


def entries(home: TinyHome) -> list[Path]:
    folder = home.root / "cache" / "tokenized"
    return (
        sorted(p for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []
    )


def test_a_cached_dataset_trains_to_the_same_dna_and_is_tokenized_once(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    encodes = Encodes(monkeypatch)
    cold = TinyHome(tmp_path / "cold", cache, {"Tiny-Llama": "llama"})
    _, cold_dna = cold.train(["llama"], epochs=1)
    assert encodes.n == 48  # the dataset's records, once
    [entry] = entries(cold)
    warm = TinyHome(tmp_path / "warm", cache, {"Tiny-Llama": "llama"})
    shutil.copytree(entry, warm.root / "cache" / "tokenized" / entry.name)
    _, warm_dna = warm.train(["llama"], epochs=1)
    assert encodes.n == 48  # nothing encoded again: the same key in another home
    assert warm_dna == cold_dna
    cold_results, warm_results = cold.results(), warm.results()
    for name in ("train_losses", "val_losses"):
        assert (
            warm_results["metrics"]["tiny-llama"][name]
            == cold_results["metrics"]["tiny-llama"][name]
        )
    # other options encode other rows: a new entry beside the first
    cold.train(["llama"], epochs=1, max_seq_len=48)
    assert encodes.n == 96 and len(entries(cold)) == 2


def test_a_resume_re_tokenizes_nothing(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = TinyHome(tmp_path / "home", cache, {"Tiny-Llama": "llama"})
    run_id = home.start(["llama"])
    encodes = Encodes(monkeypatch)
    with pytest.raises(Stopped):
        train_run(home.engine, home.config.home, run_id, should_stop=stop_at(3))
    assert encodes.n == 48
    train_run(home.engine, home.config.home, run_id)
    assert encodes.n == 48  # the resumed attempt mapped the rows the first one stored


def test_a_damaged_entry_is_rebuilt_not_trusted(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = TinyHome(tmp_path / "home", cache, {"Tiny-Llama": "llama"})
    home.train(["llama"], epochs=1)
    [entry] = entries(home)
    ids = entry / "ids.values.npy"
    data = bytearray(ids.read_bytes())
    data[-2] ^= 0x01  # one token id changed
    ids.write_bytes(bytes(data))
    encodes = Encodes(monkeypatch)
    # the same request again is a duplicate of the run that succeeded: a request_id trains it
    home.train(["llama"], epochs=1, request_id="again")
    assert encodes.n == 48  # encoded again, the damaged rows never used
    [again] = entries(home)
    meta = json.loads((again / META).read_text())
    assert meta["rows"] == 48
    assert ids.read_bytes() != bytes(data)  # rewritten


def test_no_cache_when_its_bound_is_zero(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = TinyHome(tmp_path / "home", cache, {"Tiny-Llama": "llama"})
    toml = home.root / "oneseekd.toml"
    toml.write_text(toml.read_text().replace("[trainer]\n", "[trainer]\ncache_bytes = 0\n"))
    encodes = Encodes(monkeypatch)
    home.train(["llama"], epochs=1)
    home.train(["llama"], epochs=1, request_id="again")  # not a duplicate: trained again
    assert encodes.n == 96 and entries(home) == []


def test_status_shows_the_caches_size(tmp_path: Path, cache: Path) -> None:
    home = TinyHome(tmp_path / "home", cache, {"Tiny-Llama": "llama"})
    home.train(["llama"], epochs=1)
    [entry] = entries(home)
    size = sum(f.stat().st_size for f in entry.iterdir())
    done = home.ctl("status", "--json")
    assert done.exit_code == 0, done.output
    shown = json.loads(done.stdout)["tokenization_cache"]
    assert shown == {"entries": 1, "bytes": size, "limit_bytes": 20 * 2**30}
    text = home.ctl("status").stdout
    assert "tokenization cache: 1 dataset encoding, " in text
