"""Which attempts of a run failed, and how: `trainer.max_attempts` bounds crashes and kills,
never the stops the daemon asked for (SIGTERM, shutdown) that ended in a checkpoint.

An attempt's ending is a `running -> running` run event written by the supervisor when it
reaps a trainer it stopped (queue.record_attempt_end). An attempt with no such event ended
without the daemon seeing it: the trainer or the daemon was killed or crashed.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field

from sqlalchemy import Engine, select

from oneseekd.db.engine import read_session
from oneseekd.db.models import RunEvent

STOPPED = "stopped by the daemon after a checkpoint"
UNSEEN = "ended without a checkpointed stop (the trainer or its daemon was killed or crashed)"
_ENDING = re.compile(r"attempt (\d+) (.+)", re.DOTALL)


def stopped_detail(reason: str) -> str:
    return f"{STOPPED} ({reason})"


def failed_detail(code: int | None, reason: str) -> str:
    return f"ended with exit status {code} while the daemon stopped it ({reason})"


@dataclass
class Attempts:
    """A run's claims so far, split into planned stops and failures (attempt -> how)."""

    total: int
    stops: list[int] = field(default_factory=list)
    failures: dict[int, str] = field(default_factory=dict)

    def spent(self, limit: int) -> bool:
        return len(self.failures) >= limit

    def message(self, limit: int) -> str:
        by_how: dict[str, list[int]] = defaultdict(list)
        for attempt, how in sorted(self.failures.items()):
            by_how[how].append(attempt)
        parts = [f"{_numbers(numbers)} {how}" for how, numbers in by_how.items()]
        text = (
            f"the trainer failed {len(self.failures)} times (trainer.max_attempts = {limit}): "
            + "; ".join(parts)
        )
        if self.stops:
            n = len(self.stops)
            text += f"; {n} stop{'' if n == 1 else 's'} the daemon asked for "
            text += "is not counted" if n == 1 else "are not counted"
        return text


def _numbers(numbers: list[int]) -> str:
    if len(numbers) == 1:
        return f"attempt {numbers[0]}"
    head = ", ".join(str(n) for n in numbers[:-1])
    return f"attempts {head} and {numbers[-1]}"


def attempts_of(engine: Engine, run_pk: int, total: int) -> Attempts:
    """Every claim 1..total of the run, each a stop or a failure with how it ended."""
    with read_session(engine) as session:
        details = session.scalars(
            select(RunEvent.detail)
            .where(
                RunEvent.run_id == run_pk,
                RunEvent.old_state == "running",
                RunEvent.new_state == "running",
            )
            .order_by(RunEvent.id)
        ).all()
    endings: dict[int, str] = {}
    for detail in details:
        match = _ENDING.fullmatch(detail or "")
        if match:
            endings[int(match.group(1))] = match.group(2)
    result = Attempts(total)
    for attempt in range(1, total + 1):
        how = endings.get(attempt, UNSEEN)
        if how.startswith(STOPPED):
            result.stops.append(attempt)
        else:
            result.failures[attempt] = how
    return result
