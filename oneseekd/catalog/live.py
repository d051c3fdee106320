"""The live catalog: full scans (the truth) and targeted rescans of folders that watch events
named (hints), each applied only once a folder has been still for the settle time."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import structlog
from sqlalchemy import Engine

from oneseekd.allocator import give_back
from oneseekd.catalog.scan import RESERVED, Found, Root, ScanResult, candidate, inspect_folder, scan
from oneseekd.catalog.store import Reconciled, reconcile
from oneseekd.config import default_host
from oneseekd.db.engine import release_memory
from oneseekd.wakeup import Waker

log = structlog.get_logger("oneseekd.catalog")
BURST = 100  # folders rescanned at once after which the heap's free pages are given back


class Catalog:
    def __init__(
        self,
        engine: Engine,
        roots: list[Root],
        settle: float,
        clock: Callable[[], float] = time.time,
        host: str | None = None,
    ) -> None:
        self.engine = engine
        self.host = host or default_host()  # the rows this catalog writes name it
        self.roots = roots
        self.settle = settle
        self.clock = clock
        self.scanned = False
        self._cache: dict[Path, Found] = {}
        self._due: dict[Path, float] = {}  # folder -> time it may be looked at again
        self._lock = threading.Lock()
        self.wakeup: Waker = threading.Event()  # the daemon's loop gives its own

    # --- hints -------------------------------------------------------------------------------
    def folder_of(self, path: Path) -> Path | None:
        """The folder directly under a root that a changed path belongs to."""
        for root in self.roots:  # roots are in priority order, base_models before models
            try:
                rel = path.relative_to(root.path)
            except ValueError:
                continue
            if not rel.parts:
                return None  # the root itself
            if root.kind == "models" and rel.parts[0].lower() in RESERVED:
                # oneseekd's own folders (the trainer's outputs): never a model folder, and
                # never a vanished one whose rows would all turn `missing`
                return None
            return root.path / rel.parts[0]
        return None

    def touch(self, path: Path, now: float | None = None) -> None:
        """A watch event: look at the path's model folder once it has been still long enough."""
        folder = self.folder_of(path)
        if folder is None:
            return
        now = self.clock() if now is None else now
        with self._lock:
            self._due[folder] = now + self.settle
        self.wakeup.set()

    def next_due(self) -> float | None:
        with self._lock:
            return min(self._due.values(), default=None)

    def pending(self) -> int:
        with self._lock:
            return len(self._due)

    def _take_due(self, now: float) -> set[Path]:
        with self._lock:
            due = {f for f, t in self._due.items() if t <= now}
            for folder in due:
                del self._due[folder]
            return due

    def _recheck_settling(self, models: dict[str, Found], now: float) -> None:
        """Folders still settling are looked at again once their settle time has passed."""
        with self._lock:
            for found in models.values():
                if found.state == "incomplete" and now - found.changed_at < self.settle:
                    due = found.changed_at + self.settle + 0.05
                    self._due[found.folder] = max(self._due.get(found.folder, 0.0), due)

    # --- truth -------------------------------------------------------------------------------
    def full_scan(self) -> Reconciled:
        now = self.clock()
        result = scan(self.roots, now=now, settle=self.settle, cache=self._cache)
        self._cache = {f.folder: f for f in result.everything}
        done = reconcile(self.engine, result, complete=True, host=self.host)
        self._recheck_settling(result.models, now)
        self.scanned = True
        for link in result.skipped_links:
            log.warning("symlink_outside_roots_skipped", path=str(link))
        self._log(done, "full", result.duration, len(result.models))
        self._give_back()
        return done

    def process_due(self) -> Reconciled | None:
        """Rescan the folders whose settle time has passed; None when none is due."""
        now = self.clock()
        due = self._take_due(now)
        if not due:
            return None
        started = time.perf_counter()
        models: dict[str, Found] = {}
        gone: list[Path] = []
        for folder in sorted(due):
            root = next((r for r in self.roots if folder.parent == r.path), None)
            old = self._cache.get(folder)
            spot = None if root is None else candidate(root, folder, self.roots, [])
            found = (
                None
                if spot is None or root is None
                else inspect_folder(spot[0], spot[1], root, self.roots, now, self.settle, old)
            )
            if self._needs_full_scan(folder, old, found, models):
                return self.full_scan()
            if found is None:
                self._cache.pop(folder, None)
                gone.append(folder)
            else:
                self._cache[folder] = found
                models[found.key] = found
        result = ScanResult(models=models, seen_folders=set(due))
        done = reconcile(self.engine, result, complete=False, gone=gone, host=self.host)
        self._recheck_settling(models, now)
        self._log(done, "folders", time.perf_counter() - started, len(due))
        if len(due) >= BURST:
            self._give_back()
        return done

    def take_in(self, folder: Path) -> Found | None:
        """A folder known to be whole (a pull renamed it in after checking every byte): read
        now, without waiting out the settle time; what the catalog holds for it after."""
        root = next((r for r in self.roots if folder.parent == r.path), None)
        spot = None if root is None else candidate(root, folder, self.roots, [])
        if spot is None or root is None:
            return None
        now = self.clock()
        found = inspect_folder(spot[0], spot[1], root, self.roots, now, 0.0, None)
        if found is None:
            return None
        if self._needs_full_scan(folder, self._cache.get(folder), found, {}):
            self.full_scan()
            return self._cache.get(folder)
        self._cache[folder] = found
        result = ScanResult(models={found.key: found}, seen_folders={folder})
        with self._lock:
            self._due.pop(folder, None)  # the watcher's events for it: read already
        done = reconcile(self.engine, result, complete=False, gone=[], host=self.host)
        self._log(done, "folders", 0.0, 1)
        return found

    def _give_back(self) -> None:
        """What a scan held at its peak is not kept by an idle daemon: SQLite's page cache,
        then the C heap's free pages (oneseekd/allocator.py)."""
        release_memory(self.engine)
        give_back()

    def _needs_full_scan(
        self, folder: Path, old: Found | None, found: Found | None, batch: dict[str, Found]
    ) -> bool:
        """A targeted rescan is exact only when no other folder shares the key; otherwise
        shadowing must be decided across all roots, which is what the full scan does."""
        if old is not None and found is not None and old.key != found.key:
            return True
        if found is not None and found.key in batch:
            return True
        keys = {f.key for f in (old, found) if f is not None}
        return any(f.key in keys and path != folder for path, f in self._cache.items())

    def _log(self, done: Reconciled, kind: str, seconds: float, count: int) -> None:
        for change in done.changes:
            log.info(
                "model_" + change.event,
                model=change.key,
                old_state=change.old_state,
                state=change.new_state,
                detail=change.detail,
            )
        log.debug(
            "catalog_scanned",
            kind=kind,
            count=count,
            seconds=round(seconds, 4),
            changes=len(done.changes),
        )
