"""A dataset tokenized once (issue 24, item 2): the setup a run does for one model, cold
(render, tokenize and label every record, then store the rows in the tokenization cache) and
warm (map the rows from the cache), on a synthetic chat dataset, in one process.

Both runs also read the records (JSON) and split them by content, as every run does; the
ratio the issue asks for (at most 0.1) is of the encoding step with its split and label
counts: what the cache replaces.

Run: .venv/bin/python bench/tokenized.py [--records 200000]
(not bench/tokenize.py, as the issue named it: run as a script, that file would stand in for
Python's own tokenize module, which the standard library imports)
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from chattemplates import FAMILIES

from oneseekd.certify.dna import dataset_hash
from oneseekd.trainer import tokcache
from oneseekd.trainer.data import load_records, split
from oneseekd.trainer.labels import Encoder, encode_records
from oneseekd.trainer.tokcache import TokenCache

WORDS = [
    "riksdagen",
    "stiftar",
    "lagar",
    "regeringen",
    "styr",
    "landet",
    "kommunerna",
    "ansvarar",
    "för",
    "skolan",
]


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def dataset(path: Path, records: int) -> None:
    rng = random.Random(0)
    with path.open("w", encoding="utf-8") as f:
        for _ in range(records):
            turns = [{"role": "system", "content": "Svara kort på svenska."}]
            for _ in range(rng.randint(1, 3)):
                turns.append({"role": "user", "content": sentence(rng, rng.randint(4, 16))})
                turns.append({"role": "assistant", "content": sentence(rng, rng.randint(6, 30))})
            f.write(json.dumps({"messages": turns}, ensure_ascii=False) + "\n")


def setup_once(folder: Path, data: Path, cache: TokenCache, tokenizer: object) -> dict[str, float]:
    """One model's setup as the trainer does it; the seconds of each part."""
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    records = load_records(data)
    sha = dataset_hash(data)
    seconds["read"] = time.perf_counter() - start
    start = time.perf_counter()
    train_idx, val_idx = split(records.items, 0.1, 42)
    options = {"max_seq_len": 512, "truncation_side": "right", "train_on_prompt": False}
    encoded, _, _ = tokcache.cached_or_encoded(
        cache,
        sha,
        folder,
        options,
        lambda: encode_records(Encoder(tokenizer, 512), records, data.name, "bench"),
    )
    train = encoded.subset(train_idx)
    counts = train.label_counts()
    encoded.subset(val_idx).label_bytes()
    assert len(counts) == len(train_idx)
    seconds["encode"] = time.perf_counter() - start
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    family = next(f for f in FAMILIES if f.name == "llama-3.1")
    folder = work / "tokenizer"
    tokenizer = family.tokenizer()
    tokenizer.save_pretrained(folder)
    data = work / "chat.jsonl"
    dataset(data, args.records)
    cache = TokenCache(work / "cache", 1 << 40)
    cold = setup_once(folder, data, cache, tokenizer)
    warm = setup_once(folder, data, cache, tokenizer)
    [(_, size, _)] = cache.entries()
    print(
        f"{args.records} chat records ({data.stat().st_size / 2**20:.0f} MiB), llama-3.1 "
        f"template on the tiny tokenizer; cache entry {size / 2**20:.1f} MiB"
    )
    print(f"read and hash the records: cold {cold['read']:.2f} s, warm {warm['read']:.2f} s")
    print(f"split, encode, label counts: cold {cold['encode']:.2f} s, warm {warm['encode']:.2f} s")
    print(
        f"warm / cold (encode, split, labels): {warm['encode'] / cold['encode']:.3f} "
        "(goal: at most 0.1)"
    )
    total_cold, total_warm = sum(cold.values()), sum(warm.values())
    print(f"warm / cold (the whole setup, reading included): {total_warm / total_cold:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
