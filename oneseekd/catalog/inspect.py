"""What one folder holds: config, weights, tokenizer, parameter count. Reads headers, never weights.

A safetensors file starts with an 8-byte little-endian header length and a JSON header that
gives every tensor's dtype, shape and byte range, so the exact parameter count and the size the
file must reach are known from the first few kilobytes.
"""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oneseekd import boundedjson

MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024  # the format's own limit
MAX_CONFIG_BYTES = 4 * 1024 * 1024
# the index of a 400-shard model is under 2 MB; one far larger is not an index but an attack
MAX_INDEX_BYTES = 16 * 1024 * 1024
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json")
SHARD_NAME = re.compile(r".+-\d{5}-of-(\d{5})\.(safetensors|bin)$")


class FolderProblem(Exception):
    """Why a folder is not (yet) a usable model; `state` is `incomplete` or `invalid`."""

    def __init__(self, state: str, reason: str) -> None:
        super().__init__(reason)
        self.state = state
        self.reason = reason


@dataclass(frozen=True)
class Weights:
    format: str
    files: tuple[str, ...]
    parameter_count: int | None


def read_config(folder: Path, files: dict[str, int]) -> dict[str, Any]:
    if "config.json" not in files:
        raise FolderProblem("incomplete", "no config.json yet")
    if files["config.json"] > MAX_CONFIG_BYTES:
        raise FolderProblem(
            "invalid",
            f"config.json is {files['config.json']} bytes; "
            f"a model config is far below {MAX_CONFIG_BYTES}",
        )
    try:
        data = boundedjson.read(
            folder / "config.json", max_bytes=MAX_CONFIG_BYTES, what="config.json"
        )
    except OSError as exc:
        raise FolderProblem("invalid", f"config.json cannot be read: {exc.strerror}") from exc
    except boundedjson.JSONBoundError as exc:
        raise FolderProblem("invalid", str(exc)) from exc
    except ValueError as exc:  # UnicodeDecodeError, json.JSONDecodeError
        raise FolderProblem("invalid", f"config.json is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise FolderProblem("invalid", "config.json is not a JSON object")
    if not isinstance(data.get("model_type"), str) or not data["model_type"]:
        raise FolderProblem(
            "invalid",
            "config.json names no model_type, so transformers "
            "cannot tell which architecture to build",
        )
    archs = data.get("architectures")
    if archs is not None and not (
        isinstance(archs, list) and all(isinstance(a, str) for a in archs)
    ):
        raise FolderProblem("invalid", "config.json architectures is not a list of names")
    return data


def safetensors_parameters(path: Path, size: int) -> int:
    """Exact parameter count of one safetensors file; raises when truncated or malformed."""
    name = path.name
    if size < 8:
        raise FolderProblem("incomplete", f"{name} is truncated ({size} bytes)")
    try:
        with path.open("rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            if length > MAX_SAFETENSORS_HEADER:
                raise FolderProblem(
                    "invalid", f"{name} is not a safetensors file (header length {length})"
                )
            if size < 8 + length:
                raise FolderProblem(
                    "incomplete",
                    f"{name} is truncated ({size} bytes, header alone needs {8 + length})",
                )
            header = boundedjson.loads(
                fh.read(length), max_bytes=MAX_SAFETENSORS_HEADER, what=f"{name}'s header"
            )
    except OSError as exc:
        raise FolderProblem("invalid", f"{name} cannot be read: {exc.strerror}") from exc
    except boundedjson.JSONBoundError as exc:
        raise FolderProblem("invalid", f"{name} has a malformed safetensors header: {exc}") from exc
    except ValueError as exc:  # UnicodeDecodeError, json.JSONDecodeError
        raise FolderProblem("invalid", f"{name} has a malformed safetensors header") from exc
    if not isinstance(header, dict):
        raise FolderProblem("invalid", f"{name} has a malformed safetensors header")
    count = 0
    end = 0
    try:
        for tensor, info in header.items():
            if tensor == "__metadata__":
                continue
            count += math.prod(int(d) for d in info["shape"])
            end = max(end, int(info["data_offsets"][1]))
    except (TypeError, KeyError, IndexError, ValueError) as exc:
        raise FolderProblem("invalid", f"{name} has a malformed safetensors header") from exc
    if size < 8 + length + end:
        raise FolderProblem(
            "incomplete", f"{name} is truncated ({size} of {8 + length + end} bytes)"
        )
    return count


def _index_shards(folder: Path, index_name: str, size: int) -> list[str]:
    if size > MAX_INDEX_BYTES:
        raise FolderProblem(
            "invalid",
            f"{index_name} is {size} bytes; a shard index is far below {MAX_INDEX_BYTES}",
        )
    try:
        index = boundedjson.read(folder / index_name, max_bytes=MAX_INDEX_BYTES, what=index_name)
        weight_map = index["weight_map"]
        shards = sorted(set(weight_map.values()))
    except boundedjson.JSONBoundError as exc:
        raise FolderProblem("invalid", f"{index_name} is not a valid shard index: {exc}") from exc
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise FolderProblem("invalid", f"{index_name} is not a valid shard index") from exc
    if not shards or not all(isinstance(s, str) and "/" not in s for s in shards):
        raise FolderProblem("invalid", f"{index_name} names no usable shard files")
    return shards


def _require(shards: list[str], files: dict[str, int], index_name: str) -> None:
    absent = [s for s in shards if s not in files]
    if absent:
        shown = ", ".join(absent[:3]) + (" ..." if len(absent) > 3 else "")
        raise FolderProblem(
            "incomplete",
            f"missing {len(absent)} of {len(shards)} shards named by {index_name}: {shown}",
        )


def find_weights(folder: Path, files: dict[str, int]) -> Weights:
    """The weights a folder holds, checked complete; raises FolderProblem otherwise."""
    for index_name, fmt in (
        ("model.safetensors.index.json", "safetensors-sharded"),
        ("pytorch_model.bin.index.json", "pytorch-bin-sharded"),
    ):
        if index_name in files:
            shards = _index_shards(folder, index_name, files[index_name])
            _require(shards, files, index_name)
            if fmt == "safetensors-sharded":
                total = sum(safetensors_parameters(folder / s, files[s]) for s in shards)
                return Weights(fmt, tuple(shards), total)
            return Weights(fmt, tuple(shards), None)
    shard_files = [n for n in files if SHARD_NAME.match(n)]
    if shard_files:
        raise FolderProblem(
            "incomplete",
            f"{len(shard_files)} weight shards but no "
            "model.safetensors.index.json (or pytorch_model.bin.index.json) yet",
        )
    single = sorted(n for n in files if n.endswith(".safetensors") and "/" not in n)
    if single:
        total = sum(safetensors_parameters(folder / s, files[s]) for s in single)
        return Weights("safetensors", tuple(single), total)
    if "pytorch_model.bin" in files:
        return Weights("pytorch-bin", ("pytorch_model.bin",), None)
    raise FolderProblem(
        "incomplete",
        "no weights yet (expected model.safetensors, a sharded "
        "model.safetensors.index.json, or pytorch_model.bin)",
    )


def has_tokenizer(files: dict[str, int]) -> bool:
    return any(name in files for name in TOKENIZER_FILES)
