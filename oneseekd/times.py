"""The one time format of oneseekd: UTC, microseconds, `Z` ('2026-11-24T19:00:00.000000Z').

Database columns, JSON files, `--json` output and progress all write times through utc_text,
so that every time sorts as text, reads the same from Node or the sqlite3 shell, and two
times written within one millisecond still sort in the order they happened. Stdlib only:
oneseekctl's light read path imports it.
"""

from __future__ import annotations

from datetime import UTC, datetime

TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def utcnow() -> datetime:
    return datetime.now(UTC)


def utc_text(value: datetime) -> str:
    """An aware time as fixed-width UTC text; a naive one is refused (its zone is unknown)."""
    if value.tzinfo is None:
        raise ValueError("naive datetime given where a UTC time is written")
    return value.astimezone(UTC).strftime(TIME_FORMAT)


def read_time(text: str) -> datetime:
    """ISO-8601 text to an aware UTC time; ValueError when it is not one."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def normalized(text: str | None) -> str | None:
    """Stored time text in the one format (a row another program wrote with milliseconds or
    an offset reads the same as ours); text that is not a time is kept as it is."""
    if text is None:
        return None
    try:
        return utc_text(read_time(text))
    except (ValueError, TypeError):
        return text


HUMAN_FORMAT = "%Y-%m-%d %H:%M:%S"


def human_text(value: datetime | str | None) -> str:
    """A time as a person reads it on a terminal: `2026-11-24 19:00:00` (UTC, whole
    seconds); `-` for none. Stored text that is not a time is shown as it is."""
    if value is None:
        return "-"
    if isinstance(value, str):
        try:
            value = read_time(text := value)
        except ValueError:
            return text
    if value.tzinfo is None:  # a naive time read back from SQLite is UTC
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime(HUMAN_FORMAT)


def human_age(value: datetime | str | None, now: datetime | None = None) -> str:
    """How long ago, as a person says it: `4s ago`, `2 min ago`, `3 h ago`, `2 days ago`."""
    if value is None:
        return "never"
    if isinstance(value, str):
        try:
            value = read_time(text := value)
        except ValueError:
            return text
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    seconds = max(0, int(((now or utcnow()) - value).total_seconds()))
    if seconds < 60:
        return f"{seconds}s ago"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 86400:
        return f"{seconds // 3600} h ago"
    days = seconds // 86400
    return f"{days} day{'' if days == 1 else 's'} ago"
