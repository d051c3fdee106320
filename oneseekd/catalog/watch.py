"""watchdog events as hints: each one only marks its model folder to be looked at once still.

A missed event costs latency, never correctness: the periodic full scan reconciles everything.
"""

from __future__ import annotations

from pathlib import Path

import structlog
from watchdog import events
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from oneseekd.catalog.live import Catalog
from oneseekd.wakeup import Waker

log = structlog.get_logger("oneseekd.catalog")

# Changes only. Without this filter inotify also reports every open and close-without-write,
# so the scan's own reads (and watchdog's re-walk after an overflow) flood the kernel queue:
# at 10,000 folders it overflows again and again and real events are lost.
CHANGES = [
    getattr(events, f"{kind}{change}Event")
    for kind in ("Dir", "File")
    for change in ("Created", "Deleted", "Modified", "Moved")
] + [events.FileClosedEvent]


class _Hints(FileSystemEventHandler):
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def on_any_event(self, event: FileSystemEvent) -> None:
        for raw in (event.src_path, getattr(event, "dest_path", "")):
            if raw:
                path = raw.decode() if isinstance(raw, bytes) else raw
                self.catalog.touch(Path(path))


class _Wake(FileSystemEventHandler):
    def __init__(self, wake: Waker) -> None:
        self.wake = wake

    def on_any_event(self, event: FileSystemEvent) -> None:
        self.wake.set()


class Watcher:
    """One recursive observer per outermost root (base_models lives inside models/)."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.observer = Observer()
        self.watched: list[Path] = []

    def start(self) -> None:
        handler = _Hints(self.catalog)
        paths = sorted({r.path for r in self.catalog.roots}, key=lambda p: len(p.parts))
        for path in paths:
            if any(path.is_relative_to(w) for w in self.watched) or not path.is_dir():
                continue
            later = "changes are seen at the next periodic scan"
            if self._schedule(handler, path, recursive=True, until_then=later):
                self.watched.append(path)
        try:
            self.observer.start()
        except OSError as exc:
            log.warning(
                "watch_unavailable",
                error=str(exc),
                fix="raise fs.inotify.max_user_watches / max_user_instances; until "
                "then changes are seen at the next periodic scan",
            )

    def wake_on(self, path: Path, wake: Waker) -> bool:
        """Set `wake` at every change in `path` (not below it): a file dropped into requests/
        reaches the daemon's loop at once, so the loop may sleep longer while idle. False when
        the folder cannot be watched: the loop then keeps looking at its own pace."""
        if not self.observer.is_alive() or not path.is_dir():
            return False
        later = "dropped files are seen within the idle tick (0.5 s)"
        return self._schedule(_Wake(wake), path, recursive=False, until_then=later)

    def _schedule(
        self, handler: FileSystemEventHandler, path: Path, *, recursive: bool, until_then: str
    ) -> bool:
        """Watch `path`; False, logged with the fix, when inotify refuses."""
        try:
            self.observer.schedule(handler, str(path), recursive=recursive, event_filter=CHANGES)
        except OSError as exc:
            log.warning(
                "watch_unavailable",
                path=str(path),
                error=str(exc),
                fix=f"raise fs.inotify.max_user_watches; until then {until_then}",
            )
            return False
        return True

    def stop(self) -> None:
        if self.observer.is_alive():
            self.observer.stop()
            self.observer.join(timeout=5)
