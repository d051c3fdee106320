"""Parts of the daemon's loop that fail alone: a door (files, rows), the catalog. One that
raises is logged and retried after a back-off of its own, while the others keep serving (an
unreadable requests/ must not stop the rows another program INSERTs, nor the queue)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog

log = structlog.get_logger("oneseekd")
T = TypeVar("T")

BACKOFF_SECONDS = 0.5  # the first retry; doubling up to BACKOFF_MAX
BACKOFF_MAX = 30.0


@dataclass
class _Failing:
    count: int
    retry_at: float


class Alone:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._failing: dict[str, _Failing] = {}

    @property
    def failing(self) -> bool:
        """Whether a part failed and has not worked since (the daemon is not idle then)."""
        return bool(self._failing)

    def run(self, part: str, step: Callable[[], T]) -> T | None:
        """step(), or None when it raised (logged, with the traceback the first time) or is
        still backing off from its last failure."""
        failing = self._failing.get(part)
        now = self.clock()
        if failing is not None and now < failing.retry_at:
            return None
        try:
            result = step()
        except Exception as exc:
            count = (failing.count if failing else 0) + 1
            wait = min(BACKOFF_SECONDS * 2 ** (count - 1), BACKOFF_MAX)
            self._failing[part] = _Failing(count, now + wait)
            log.error(
                "part_failed",
                part=part,
                error=f"{type(exc).__name__}: {exc}",
                failures_in_a_row=count,
                retry_in_seconds=wait,
                exc_info=count == 1 or count % 20 == 0,
            )
            return None
        if failing is not None:
            del self._failing[part]
            log.info("part_recovered", part=part, after_failures=failing.count)
        return result
