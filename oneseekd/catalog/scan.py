"""The full scan of the model roots: the truth the catalog is reconciled against.

Roots, in priority order: models/oneseek-7b-zero/base_models, models/ (less the daemon's own
folders), then the configured extra roots (plain folders of models, or a Hugging Face hub cache
whose `models--org--name/snapshots/<rev>/` folders are models). When one key is found in several
places the first root wins and the others are reported as shadowed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from oneseekd.catalog.inspect import (
    FolderProblem,
    find_weights,
    has_tokenizer,
    read_config,
)
from oneseekd.config import Config
from oneseekd.naming import display_name, normalize_model_name

# Folders under models/ that belong to oneseekd itself, never base models.
RESERVED = frozenset({"oneseek-7b-zero", "oneseek-certified", "backups", "oneseek-7b-zero-current"})
PARTIAL_SUFFIXES = (".tmp", ".part", ".partial", ".incomplete", ".lock")
HUB_PREFIX = "models--"


@dataclass(frozen=True)
class Root:
    path: Path
    kind: str  # "base_models", "models" or "extra"

    @property
    def resolved(self) -> Path:
        return resolve(self.path) or self.path.absolute()


def resolve(path: Path) -> Path | None:
    """path.resolve(), or None for a symbolic link loop (Python raises RuntimeError for
    those, not an OSError) or a path that cannot be resolved."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return None


LOOP = "a symbolic link loop"


@dataclass(frozen=True, slots=True)  # slots: the catalog keeps one per folder between scans
class Found:
    """One model folder as the scan saw it."""

    key: str
    folder: Path  # the folder whose name gives the key
    path: Path  # where config.json is (a hub snapshot, or the folder itself)
    root: Root
    state: str
    reason: str | None = None
    detected_name: str = ""
    model_type: str | None = None
    architectures: tuple[str, ...] | None = None
    parameter_count: int | None = None
    size_bytes: int = 0
    weight_format: str | None = None
    has_tokenizer: bool = False
    fingerprint: str = ""
    changed_at: float = 0.0  # newest mtime/ctime in the folder
    shadowed: tuple[str, ...] = ()
    # a folder `oneseekctl pull` installed: the repository and commit its manifest names
    source_repository: str | None = None
    source_commit: str | None = None

    def differs_from(self, row: Any) -> bool:
        """Whether a catalog row (the ORM's, or the light read path's plain one) says other
        than the scan found. Columns another program overwrote with text that cannot be read
        (read as None) count as different, so a full scan rewrites them."""
        return (
            row.fingerprint != self.fingerprint
            or row.architectures != (list(self.architectures) if self.architectures else None)
            or None in (row.first_seen_at, row.updated_at, row.state_changed_at)
            or row.state != self.state
            or row.path != str(self.path)
            or row.state_reason != self.reason
            or row.shadowed_paths != (list(self.shadowed) or None)
            or row.detected_name != self.detected_name
            or row.source_repository != self.source_repository
            or row.source_commit != self.source_commit
        )


@dataclass
class ScanResult:
    models: dict[str, Found] = field(default_factory=dict)  # the winner of each key
    everything: list[Found] = field(default_factory=list)  # shadowed folders too
    seen_folders: set[Path] = field(default_factory=set)
    skipped_links: list[Path] = field(default_factory=list)
    duration: float = 0.0


def model_roots(config: Config) -> list[Root]:
    roots = [Root(config.home.base_models, "base_models"), Root(config.home.models, "models")]
    roots += [Root(p, "extra") for p in config.catalog.extra_roots]
    return roots


def _inside(path: Path, roots: list[Root]) -> bool:
    return any(path.is_relative_to(r.resolved) for r in roots)


@dataclass(frozen=True)
class Listing:
    files: dict[str, int]  # relative name -> size
    partial: list[str]  # files of a copy or download still in progress
    newest: float  # the newest mtime or ctime
    fingerprint: str  # of names, sizes and times
    loops: list[str] = field(default_factory=list)  # links that lead round in a circle


def _list_files(folder: Path, roots: list[Root]) -> Listing:
    """Every file of a model folder, with sizes and times, without opening any.

    ctime counts as a change too: a copy that preserves mtimes (cp -p, rsync -a) still moves
    ctime, so a folder being copied in is never taken for a still one.
    """
    files: dict[str, int] = {}
    partial: list[str] = []
    loops: list[str] = []
    digest = hashlib.sha256()
    newest = _changed(os.stat(folder))
    pending = [("", os.fspath(folder))]  # (relative prefix, absolute path), depth first
    while pending:
        prefix, path = pending.pop()
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            if not prefix:
                raise  # the model folder itself is gone
            continue  # a sub-folder vanished mid-walk: the next scan sees it

        for entry in entries:
            rel = prefix + entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    newest = max(newest, _changed(entry.stat(follow_symlinks=False)))
                    pending.append((rel + "/", entry.path))
                    continue
                if entry.name.endswith(PARTIAL_SUFFIXES):
                    partial.append(rel)
                    continue
                if entry.name.startswith("."):
                    continue
                if entry.is_symlink():
                    target = resolve(Path(entry.path))
                    if target is None:
                        loops.append(rel)
                        continue
                    if not _inside(target, roots):
                        continue
                st = entry.stat()  # a link's target: the hub cache links snapshots to blobs
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    loops.append(rel)
                continue  # vanished between listing and stat: the next scan sees it settled
            files[rel] = st.st_size
            newest = max(newest, _changed(st))
            digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\n".encode())
    return Listing(files, partial, newest, digest.hexdigest(), loops)


def _changed(st: os.stat_result) -> float:
    return max(st.st_mtime, st.st_ctime)


def inspect_folder(
    folder: Path,
    path: Path,
    root: Root,
    roots: list[Root],
    now: float,
    settle: float,
    previous: Found | None = None,
) -> Found | None:
    """Inspect one candidate folder; None when it holds nothing model-like at all."""
    key = normalize_model_name(folder.name.removeprefix(HUB_PREFIX).split("--")[-1])
    try:
        listing = _list_files(path, roots)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            return None
        return Found(
            key=key,
            folder=folder,
            path=path,
            root=root,
            state="invalid",
            reason=f"the folder is {LOOP}; point the link at a model folder or remove it",
            detected_name=folder.name,
        )
    files = listing.files
    if not files and not listing.partial and not listing.loops:
        return None
    base = Found(
        key=key,
        folder=folder,
        path=path,
        root=root,
        state="incomplete",
        detected_name=display_name(None, folder.name),
        size_bytes=sum(files.values()),
        has_tokenizer=has_tokenizer(files),
        fingerprint=listing.fingerprint,
        changed_at=listing.newest,
    )
    if listing.loops:
        shown = ", ".join(listing.loops[:3])
        return replace(
            base,
            state="invalid",
            reason=f"{shown} is {LOOP}; fix the link or remove it",
        )
    if listing.partial:
        shown = ", ".join(listing.partial[:3])
        return replace(
            base,
            reason=f"partial files present ({shown}): a copy or download "
            "is still running; if it was aborted, remove them and copy again",
        )
    if now - listing.newest < settle:
        return replace(
            base,
            reason=f"changed {max(now - listing.newest, 0):.1f}s ago; "
            f"waiting {settle:g}s for the copy to settle",
        )
    if (
        previous is not None
        and previous.fingerprint == listing.fingerprint
        and previous.state in ("ready", "invalid")
        and previous.path == path
    ):
        return replace(previous, root=root, folder=folder, shadowed=())
    if "config.json" not in files and not any(
        n.endswith((".safetensors", ".bin", ".index.json")) for n in files
    ):
        return None  # neither config nor weights: some other folder, not a model
    if "adapter_config.json" in files:
        return replace(
            base,
            state="invalid",
            reason="this is a LoRA adapter (adapter_config.json), not a base model",
        )
    try:
        config = read_config(path, files)
        weights = find_weights(path, files)
    except FolderProblem as problem:
        return replace(base, state=problem.state, reason=problem.reason)
    archs = config.get("architectures")
    repository, commit = pulled_from(path)
    return replace(
        base,
        source_repository=repository,
        source_commit=commit,
        state="ready",
        reason=None,
        detected_name=display_name(config, folder.name),
        model_type=config["model_type"],
        architectures=tuple(archs) if isinstance(archs, list) else None,
        parameter_count=weights.parameter_count,
        weight_format=weights.format,
    )


def _hub_snapshot(entry: Path) -> Path | None:
    """The snapshot `refs/main` names, else the newest one."""
    snapshots = entry / "snapshots"
    ref = entry / "refs" / "main"
    try:
        if ref.is_file():
            rev = ref.read_text(encoding="utf-8").strip()
            if rev and "/" not in rev and (snapshots / rev).is_dir():
                return snapshots / rev
        revs = [p for p in snapshots.iterdir() if p.is_dir()]
    except OSError:
        return None
    return max(revs, key=lambda p: p.stat().st_mtime) if revs else None


PULL_MANIFEST = ".oneseek-pull.json"  # written by oneseekd/hub/fetch.py's install()


def pulled_from(path: Path) -> tuple[str | None, str | None]:
    """(repository, commit) a pulled folder's manifest names; (None, None) for a folder
    copied in, or a manifest that does not read as one."""
    try:
        data = json.loads((path / PULL_MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, None
    if not isinstance(data, dict):
        return None, None
    repository, commit = data.get("repository"), data.get("commit")
    if not (isinstance(repository, str) and isinstance(commit, str)):
        return None, None
    return repository[:300], commit[:64]


def candidate(
    root: Root, folder: Path, roots: list[Root], skipped: list[Path]
) -> tuple[Path, Path] | None:
    """(folder, model path) when a folder directly under a root may hold a model."""
    name = folder.name
    if name.startswith(".") or (root.kind == "models" and name.lower() in RESERVED):
        return None
    try:
        if folder.is_symlink():
            target = resolve(folder)
            if target is None:
                return folder, folder  # inspected as invalid: a loop is shown, not hidden
            if not _inside(target, roots):
                skipped.append(folder)
                return None
            if root.kind == "models" and target.is_relative_to(
                (root.path / "oneseek-7b-zero").resolve()
            ):
                return None  # e.g. OneSeek-7B-Zero-CURRENT
        if not folder.is_dir():
            return None
    except OSError:
        return None
    if name.startswith(HUB_PREFIX):
        snapshot = _hub_snapshot(folder)
        return None if snapshot is None else (folder, snapshot)
    return folder, folder


def candidates(root: Root, roots: list[Root], skipped: list[Path]) -> Iterator[tuple[Path, Path]]:
    """candidate() for every folder directly under a root, in name order."""
    try:
        names = sorted(os.listdir(root.path))
    except OSError:
        return
    for name in names:
        found = candidate(root, root.path / name, roots, skipped)
        if found is not None:
            yield found


def scan(
    roots: list[Root],
    *,
    now: float | None = None,
    settle: float = 0.0,
    cache: Mapping[Path, Found] | None = None,
) -> ScanResult:
    """Scan every root. `cache` holds the previous scan's results, reused for folders whose
    fingerprint (names, sizes, times) has not changed, so periodic rescans only stat."""
    started = time.perf_counter()
    now = time.time() if now is None else now
    cache = cache or {}
    result = ScanResult()
    for root in roots:
        for folder, path in candidates(root, roots, result.skipped_links):
            result.seen_folders.add(folder)
            found = inspect_folder(folder, path, root, roots, now, settle, cache.get(folder))
            if found is None:
                continue
            result.everything.append(found)
            winner = result.models.get(found.key)
            if winner is None:
                result.models[found.key] = found
            else:
                result.models[found.key] = replace(
                    winner, shadowed=(*winner.shadowed, str(found.folder))
                )
    result.duration = time.perf_counter() - started
    return result
