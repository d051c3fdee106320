"""A dataset is tokenized once: the encoded rows of each (dataset, tokenizer, options) are kept
under the home's `cache/tokenized/`, and every later run, resume and relaunch of the same
data maps them from disk instead of rendering and tokenizing every record again.

An entry is a folder named by its key, the sha256 of everything that decides the encoding:

- the dataset's sha256 (the bytes the run read, trainer/datahash.py);
- the tokenizer's files (tokenizer.json, tokenizer_config.json with its chat template,
  chat_template.jinja, special_tokens_map.json, added_tokens.json, a SentencePiece model, a
  vocabulary and its merges) by their sha256, and the transformers and tokenizers versions;
- `max_seq_len`, `truncation_side`, `train_on_prompt`;
- the labelling code: the source of the modules that render, tokenize and label (`CODE`), so
  a change to them can never reuse rows the old code made.

Each row field of the encoding (ids, label masks, the bytes each token holds) is one flat
`.npy` file and the rows' start offsets another; `meta.json` holds the row count, the
truncated count and each file's sha256. An entry is written into a temporary folder and
renamed into place (whole or not at all), and its checksums are verified before it is used:
an entry that fails them is removed and rebuilt, never trusted. The arrays are memory-mapped,
and rows are read as the batches ask for them (`Rows`).

The cache is bounded by `[trainer] cache_bytes`: after an entry is written, the least recently
used others are removed until the total fits (using an entry touches its meta.json).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import fields as row_fields
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from oneseekd import cachedir
from oneseekd.certify.artifacts import sha256_file
from oneseekd.trainer.data import Encoded
from oneseekd.trainer.rows import Rows

FOLDER, META = cachedir.FOLDER, cachedir.META
log = structlog.get_logger("oneseekd.trainer")
FORMAT = 1  # the layout of an entry's files
# the files a tokenizer is read from: any of them changes the tokens
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "spiece.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tekken.json",
)
# the modules whose code decides a record's ids, labels and bytes
CODE = (
    "oneseekd.trainer.labels",
    "oneseekd.trainer.turns",
    "oneseekd.trainer.tokenizer",
    "oneseekd.trainer.data",
    "oneseekd.trainer.rows",
    "oneseekd.trainer.tokcache",
)


def _narrowest(values: np.ndarray) -> type:
    """The smallest integer type that holds every value (masks in one byte, ids in two or
    four): the cache's size on disk and in the page cache."""
    low, high = (int(values.min()), int(values.max())) if len(values) else (0, 0)
    for dtype in (np.uint8, np.uint16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return dtype
    return np.int64


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "none"


def code_hash() -> str:
    """The sha256 of the labelling code's source (CODE)."""
    digest = hashlib.sha256()
    for name in CODE:
        module = sys.modules.get(name) or __import__(name, fromlist=["_"])
        digest.update(Path(str(module.__file__)).read_bytes())
    return digest.hexdigest()


def key(dataset_sha256: str, tokenizer_folder: Path, options: Mapping[str, Any]) -> str:
    """The entry's name: the sha256 of everything that decides the encoding."""
    files = {
        name: sha256_file(tokenizer_folder / name)
        for name in TOKENIZER_FILES
        if (tokenizer_folder / name).is_file()
    }
    decided = {
        "format": FORMAT,
        "dataset": dataset_sha256,
        "tokenizer_files": files,
        "transformers": _version("transformers"),
        "tokenizers": _version("tokenizers"),
        "options": {k: options[k] for k in sorted(options)},
        "code": code_hash(),
    }
    return hashlib.sha256(json.dumps(decided, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Entry:
    """What an entry holds: its row fields (None where the encoding has none) and the count
    of truncated records."""

    fields: dict[str, Rows | None]
    truncated: int


class TokenCache:
    """The home's cache of encoded datasets, bounded to `limit` bytes (0: keep nothing)."""

    def __init__(self, root: Path, limit: int) -> None:
        self.root = root / FOLDER
        self.limit = limit

    def load(self, name: str) -> Entry | None:
        """The entry `name`, verified; None when there is none or it fails its checksums (it
        is then removed, so the caller's rebuild replaces it)."""
        folder = self.root / name
        try:
            meta = json.loads((folder / META).read_text(encoding="utf-8"))
            if meta.get("format") != FORMAT:
                raise ValueError("another format")
            fields: dict[str, Rows | None] = {}
            for field, files in meta["fields"].items():
                if files is None:
                    fields[field] = None
                    continue
                arrays = []
                for file, sha in files:
                    if sha256_file(folder / file) != sha:
                        raise ValueError(f"{file} fails its checksum")
                    arrays.append(np.load(folder / file, mmap_mode="r", allow_pickle=False))
                values, starts = arrays
                if len(starts) != meta["rows"] + 1 or int(starts[-1]) != len(values):
                    raise ValueError("rows and offsets disagree")
                fields[field] = Rows(values, starts)
            os.utime(folder / META)  # used now: the last to be evicted
            return Entry(fields, int(meta["truncated"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            shutil.rmtree(folder, ignore_errors=True)
            return None

    def store(
        self, name: str, fields: Mapping[str, Sequence[Sequence[int]] | None], truncated: int
    ) -> None:
        """Write entry `name` whole or not at all, then evict down to the limit. A cache that
        cannot be written costs only the next run's tokenizing."""
        if self.limit <= 0:
            return
        tmp = self.root / f".{name}.{os.getpid()}.tmp"
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            meta: dict[str, Any] = {"format": FORMAT, "truncated": truncated, "fields": {}}
            for field, rows in fields.items():
                if rows is None:
                    meta["fields"][field] = None
                    continue
                meta["rows"] = len(rows)
                lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
                starts = np.zeros(len(rows) + 1, dtype=np.int64)
                np.cumsum(lengths, out=starts[1:])
                values = np.fromiter(
                    (v for r in rows for v in r), dtype=np.int64, count=int(starts[-1])
                )
                values = values.astype(_narrowest(values), copy=False)
                files = []
                for suffix, array in (("values", values), ("starts", starts)):
                    file = f"{field}.{suffix}.npy"
                    np.save(tmp / file, array, allow_pickle=False)
                    files.append((file, sha256_file(tmp / file)))
                meta["fields"][field] = files
            (tmp / META).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
            target = self.root / name
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            log.warning(
                "tokenization_cache_not_written",
                folder=str(self.root),
                error=f"{type(exc).__name__}: {exc}",
                text="the run goes on, and its next attempt tokenizes again; free space there "
                "or set [trainer] cache_bytes = 0 to keep no cache",
            )
            return
        self.evict(keep=name)

    def entries(self) -> list[tuple[Path, int, float]]:
        """Every entry: its folder, its bytes and when it was last used."""
        return cachedir.entries(self.root.parent)

    def size(self) -> tuple[int, int]:
        """The number of entries and their bytes."""
        return cachedir.size(self.root.parent)

    def evict(self, keep: str | None = None) -> None:
        """Remove the least recently used entries (never `keep`) until the total fits; and
        temporary folders of writers that died over an hour ago."""
        if self.root.is_dir():
            for tmp in self.root.glob(".*.tmp"):
                try:
                    if time.time() - tmp.stat().st_mtime > 3600:
                        shutil.rmtree(tmp, ignore_errors=True)
                except OSError:
                    continue
        entries = sorted(self.entries(), key=lambda e: e[2])
        total = sum(size for _, size, _ in entries)
        for folder, size, _ in entries:
            if total <= self.limit:
                break
            if folder.name == keep:
                continue
            shutil.rmtree(folder, ignore_errors=True)
            total -= size


def cached_or_encoded(
    cache: TokenCache | None,
    dataset_sha256: str,
    tokenizer_folder: Path,
    options: Mapping[str, Any],
    encode: Callable[[], tuple[Encoded, int]],
    write: bool = True,
) -> tuple[Encoded, int, bool]:
    """The rows of the dataset for this tokenizer and options, their truncated count, and
    whether they came from the cache: mapped from its entry when there is a sound one, else
    `encode()`d and (when `write`: one writer per run) stored. Without a cache or a dataset
    hash, always encoded."""
    name = None
    if cache is not None and dataset_sha256:
        name = key(dataset_sha256, tokenizer_folder, options)
        entry = cache.load(name)
        if entry is not None and entry.fields.get("ids") is not None:
            return Encoded(**entry.fields), entry.truncated, True  # type: ignore[arg-type]
    encoded, truncated = encode()
    if cache is not None and name is not None and write:
        rows = {f.name: getattr(encoded, f.name) for f in row_fields(Encoded)}
        cache.store(name, rows, truncated)
    return encoded, truncated, False
