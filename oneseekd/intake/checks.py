"""The checks a request needs the home and the catalog for: models, dataset, version."""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from oneseekd.catalog.query import resolve_one
from oneseekd.catalog.scan import Root
from oneseekd.certify.dna import dataset_hash
from oneseekd.db.models import BaseModel, Run
from oneseekd.errors import ModelResolutionError
from oneseekd.gpus import resolve
from oneseekd.home import HomePaths
from oneseekd.intake.incoming import safe_text
from oneseekd.intake.records import Scan, scan
from oneseekd.intake.schema import VERSION
from oneseekd.naming import artifact_prefix, match_model
from oneseekd.spec.fields import memory_bytes
from oneseekd.spec.plan import fit_problem
from oneseekd.spec.request import RunSpec

DATASET_SUFFIXES = (".jsonl", ".json")
SCANS_KEPT = 16
_SCANS: dict[Path, tuple[tuple[int, int, int, int], Scan]] = {}
_HASHES: dict[Path, tuple[tuple[int, int, int, int], str]] = {}


def check_dataset(
    name: str, paths: HomePaths, val_fraction: float | None = None
) -> tuple[Path | None, list[str]]:
    """The dataset file under DIR/datasets/, refusing anything that leads outside it, and
    every record read and checked (records.scan, the trainer's own reader). With the
    request's val_fraction above 0, a dataset that can hold no record out is refused."""
    resolved, problems = confined_dataset(name, paths)
    if resolved is None:
        return None, problems
    shown = repr(name)
    if resolved.suffix.lower() not in DATASET_SUFFIXES:
        return None, [f"dataset {shown} must be JSONL (.jsonl) or a JSON array (.json)"]
    try:
        found = _scanned(resolved)
    except OSError as exc:
        return None, [f"dataset {shown} cannot be read: {exc.strerror}"]
    problems = [f"dataset {shown} {p}" for p in found.shown(after_place=" ")]
    if not found.problem_count:
        problems += _count_problems(shown, found, val_fraction)
    return (None if problems else resolved), problems


def _scanned(path: Path) -> Scan:
    """records.scan of the file, reused while the file is the same (device, inode, size,
    modification time in ns): a batch of requests naming one dataset reads it once."""
    st = path.stat()
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    found = _SCANS.get(path)
    if found is None or found[0] != key:
        if len(_SCANS) >= SCANS_KEPT:
            _SCANS.pop(next(iter(_SCANS)))
        found = _SCANS[path] = (key, scan(path, keep=False))
    return found[1]


def dataset_sha(path: Path) -> str | None:
    """The sha256 of a dataset's bytes (certify.dna.dataset_hash, the hash the DNA carries),
    kept while the file is the same as for _scanned: what tells a request repeated on the
    same data from one on changed data (accept.py, duplicates). None if it cannot be read."""
    try:
        st = path.stat()
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        found = _HASHES.get(path)
        if found is None or found[0] != key:
            if len(_HASHES) >= SCANS_KEPT:
                _HASHES.pop(next(iter(_HASHES)))
            found = _HASHES[path] = (key, dataset_hash(path))
    except OSError:
        return None
    return found[1]


def _count_problems(shown: str, found: Scan, val_fraction: float | None) -> list[str]:
    if found.rows == 0:
        return [f"dataset {shown} is empty"]
    if found.rows < 2:
        return [f"dataset {shown} has {found.rows} record; at least 2 are needed"]
    # val_fraction 0 asks for no held-out data: such a run is certified "not measured"
    if val_fraction and not found.varied:
        return [
            f"dataset {shown} holds {found.rows} copies of one record: no record can be held "
            "out for validation (copies always fall on one side); add different records"
        ]
    return []


def run_folder_problem(run_id: str, paths: HomePaths) -> list[str]:
    """A RUN_ID names oneseek-certified/<run_id>, which the run writes into while it trains and
    links to its certified folder at the end: a name already there (another program's files,
    a link) is never taken over."""
    folder = paths.certified / run_id
    if not os.path.lexists(folder):
        return []
    what = "a link" if folder.is_symlink() else "a folder" if folder.is_dir() else "a file"
    return [
        f"run id {run_id}: {folder} already exists as {what} oneseekd did not make; it would "
        "be the run's live folder, and another program's files are never written into or "
        "removed: choose another RUN_ID (or omit it to get a new one)"
    ]


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
        there = datasets_there(paths, name)
        return None, [f"dataset {shown} does not exist in {paths.datasets}/; {there}; {fix}"]
    except (OSError, RuntimeError) as exc:
        return None, [f"dataset {shown} cannot be opened: {exc}"]
    if not resolved.is_relative_to(root):
        return None, [f"dataset {shown} is a link leading outside {paths.datasets}/; {fix}"]
    if not resolved.is_file():
        return None, [f"dataset {shown} is not a file"]
    return resolved, []


DATASETS_SHOWN = 10
DATASETS_LISTED = 1000  # the files looked at: a huge folder is never walked whole


def datasets_there(paths: HomePaths, name: str) -> str:
    """The dataset files the folder holds, the closest to `name` first (difflib), as a
    mistyped name is most often one letter off: what to write instead, without a shell."""
    root = paths.datasets
    found: list[str] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for file in sorted(files):
            if not file.startswith(".") and file.lower().endswith(DATASET_SUFFIXES):
                # a name with undecodable bytes is shown escaped, as every stored text is
                found.append(safe_text((Path(folder) / file).relative_to(root).as_posix()))
        if len(found) >= DATASETS_LISTED:
            break
    if not found:
        return "the folder holds no .jsonl or .json file"

    def closeness(candidate: str) -> tuple[float, str]:
        return -difflib.SequenceMatcher(None, name.lower(), candidate.lower()).ratio(), candidate

    ranked = sorted(found, key=closeness)
    more = len(ranked) - DATASETS_SHOWN
    shown = ", ".join(ranked[:DATASETS_SHOWN]) + (f" and {more} more" if more > 0 else "")
    return f"the dataset files there, closest first: {shown}"


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


def memory_problems(
    spec: RunSpec, models: Sequence[BaseModel], memory: int, gpus_here: int
) -> list[str]:
    """Each model whose training step cannot fit `memory` bytes (one GPU's, or the host's
    RAM) in any way its options allow, with the numbers and the fix (spec/plan.py). A model
    folder this host cannot read is left to the trainer, which says what is wrong."""
    problems: list[str] = []
    gpu = gpus_here > 0
    for model in models:
        options = spec.for_model(model.key)
        cap = options.max_memory_per_gpu
        limit = min(memory, memory_bytes(str(cap))) if cap and gpu else memory
        try:
            config = json.loads((Path(model.path) / "config.json").read_text(encoding="utf-8"))
            processes = resolve(options.gpus, gpus_here) if gpu else 1
            problem = fit_problem(
                model.key, config, options.model_dump(), limit, gpu, processes=processes
            )
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if problem is not None:
            problems.append(f"base_models: {problem}")
    return problems
