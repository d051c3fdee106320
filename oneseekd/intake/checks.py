"""The checks a request needs the home and the catalog for: models, dataset, version."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from oneseekd.catalog.query import resolve_one
from oneseekd.catalog.scan import Root
from oneseekd.db.models import BaseModel, Run
from oneseekd.errors import ModelResolutionError
from oneseekd.home import HomePaths
from oneseekd.intake.schema import VERSION
from oneseekd.naming import artifact_prefix, match_model

SNIFF_BYTES = 256 * 1024
SNIFF_RECORDS = 5
DATASET_SUFFIXES = (".jsonl", ".json")


def record_problem(record: Any) -> str | None:
    """Why one dataset record is not of a supported shape, or None."""
    if not isinstance(record, dict):
        return f"is a JSON {type(record).__name__}, not an object"
    # an empty text or response encodes to an eos alone: nothing to predict, a NaN loss
    if isinstance(record.get("text"), str):
        return None if record["text"].strip() else "has an empty text: nothing to train on"
    if isinstance(record.get("instruction"), str) and isinstance(record.get("output"), str):
        if not record["output"].strip():
            return "has an empty output: nothing to train on"
        return None
    messages = record.get("messages")
    if (
        isinstance(messages, list)
        and messages
        and all(
            isinstance(m, dict)
            and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)
            for m in messages
        )
    ):
        return None
    return (
        'has none of the supported shapes: {"text": ...}, {"instruction": ..., '
        '"output": ...} or {"messages": [{"role": ..., "content": ...}]}'
    )


def _sniff(path: Path, shown: str) -> list[str]:
    """Read the first records of a dataset and check their shape."""
    with path.open("rb") as fh:
        head = fh.read(SNIFF_BYTES)
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a character cut at the sniff boundary
            return [f"dataset {shown} is not UTF-8 text (byte {exc.start})"]
        text = head[: exc.start].decode("utf-8")
    stripped = text.lstrip()
    if not stripped:
        return [f"dataset {shown} is empty"]
    if stripped.startswith("["):
        return _sniff_array(stripped, shown)
    lines = text.split("\n")
    if len(head) == SNIFF_BYTES:
        lines = lines[:-1]  # the last line may be cut at the sniff boundary
    problems: list[str] = []
    checked = 0
    for number, line in enumerate(lines, start=1):
        if checked >= SNIFF_RECORDS:
            break
        if not line.strip():
            continue
        checked += 1
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"dataset {shown} line {number} is not JSON: {exc.msg}")
            continue
        problem = record_problem(record)
        if problem:
            problems.append(f"dataset {shown} line {number} {problem}")
    return problems


def _sniff_array(text: str, shown: str) -> list[str]:
    decoder = json.JSONDecoder()
    position = 1
    for index in range(SNIFF_RECORDS):
        while position < len(text) and text[position] in " \t\r\n,":
            position += 1
        if position >= len(text) or text[position] == "]":
            return [] if index else [f"dataset {shown} is an empty JSON array"]
        try:
            record, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as exc:
            if len(text.encode()) >= SNIFF_BYTES - 4:
                return []  # the record runs past what was read: checked in full at training
            return [f"dataset {shown} record {index} is not JSON: {exc.msg}"]
        problem = record_problem(record)
        if problem:
            return [f"dataset {shown} record {index} {problem}"]
    return []


def check_dataset(name: str, paths: HomePaths) -> tuple[Path | None, list[str]]:
    """The dataset file under DIR/datasets/, refusing anything that leads outside it."""
    resolved, problems = confined_dataset(name, paths)
    if resolved is None:
        return None, problems
    shown = repr(name)
    if resolved.suffix.lower() not in DATASET_SUFFIXES:
        return None, [f"dataset {shown} must be JSONL (.jsonl) or a JSON array (.json)"]
    try:
        problems = _sniff(resolved, shown)
    except OSError as exc:
        return None, [f"dataset {shown} cannot be read: {exc.strerror}"]
    return (None if problems else resolved), problems


def confined_dataset(name: str, paths: HomePaths) -> tuple[Path | None, list[str]]:
    """The resolved dataset file, when name leads to a file inside DIR/datasets/; else why
    not. Intake checks it, and the trainer again at load: the file may have been swapped for
    a link leading elsewhere after the request was accepted."""
    shown = repr(name)
    fix = f"put the file under {paths.datasets}/ and name it relative to that folder"
    if "\x00" in name or "\\" in name:
        return None, [f"dataset {shown} contains characters not allowed in a path; {fix}"]
    relative = Path(name)
    if relative.is_absolute():
        return None, [f"dataset {shown} is an absolute path; {fix}"]
    if ".." in relative.parts:
        return None, [f"dataset {shown} climbs out of the datasets folder with '..'; {fix}"]
    root = paths.datasets.resolve()
    candidate = paths.datasets / relative
    try:
        resolved = candidate.resolve(strict=True)
    except (FileNotFoundError, NotADirectoryError):
        return None, [f"dataset {shown} does not exist in {paths.datasets}/; {fix}"]
    except (OSError, RuntimeError) as exc:
        return None, [f"dataset {shown} cannot be opened: {exc}"]
    if not resolved.is_relative_to(root):
        return None, [f"dataset {shown} is a link leading outside {paths.datasets}/; {fix}"]
    if not resolved.is_file():
        return None, [f"dataset {shown} is not a file"]
    return resolved, []


def resolve_models(
    rows: dict[str, BaseModel], names: list[str], roots: Sequence[Root], host: str | None = None
) -> tuple[list[BaseModel], list[str]]:
    """Resolve names against the catalog rows present (not `missing`); a row whose key or
    path the scan did not write is never chosen."""
    chosen: list[BaseModel] = []
    problems: list[str] = []
    for name in names:
        try:
            row = resolve_one(name, rows, roots, host).model
        except ModelResolutionError as exc:
            problems.append(f"base_models: {exc.message}")
            continue
        if any(c.key == row.key for c in chosen):
            problems.append(f"base_models: {row.key} is named twice")
        else:
            chosen.append(row)
    return chosen, problems


def check_per_model(per_model: Iterable[str], keys: list[str]) -> tuple[dict[str, str], list[str]]:
    """Map each per_model name to one of the requested model keys."""
    mapping: dict[str, str] = {}
    problems: list[str] = []
    for name in per_model:
        try:
            mapping[name] = match_model(name, keys).key
        except ModelResolutionError:
            problems.append(
                f"per_model: {name!r} is not one of the requested models ({', '.join(keys)})"
            )
    return mapping, problems


def _file_versions(paths: HomePaths) -> set[str]:
    pattern = re.compile(rf"^{re.escape(artifact_prefix())}v(\d+\.\d+)(?:-.+)?\.(?:json|pth)$")
    found: set[str] = set()
    try:
        names = os.listdir(paths.zero / "weights")
    except OSError:
        return found
    for name in names:
        match = pattern.match(name)
        if match:
            found.add(match.group(1))
    return found


def taken_versions(session: Session, paths: HomePaths) -> set[str]:
    live = session.scalars(
        select(Run.version).where(Run.state.in_(("queued", "running", "succeeded")))
    )
    return set(live) | _file_versions(paths)


def version_key(version: str) -> tuple[int, int]:
    major, _, minor = version.partition(".")
    return int(major), int(minor)


def next_version(taken: set[str]) -> str:
    """The minor after the highest version taken; 1.0 first."""
    valid = [v for v in taken if VERSION.match(v)]
    if not valid:
        return "1.0"
    major, minor = max(version_key(v) for v in valid)
    return f"{major}.{minor + 1}"
