"""One time format everywhere: UTC, microseconds, `Z` (oneseekd/times.py)."""

from __future__ import annotations

import re
import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import Engine

from oneseekd.cli.context import emit_json
from oneseekd.cli.display import iso
from oneseekd.config import Config
from oneseekd.times import normalized, read_time, utc_text

FORMAT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


def test_utc_text_is_fixed_width_utc_with_microseconds() -> None:
    stockholm = timezone(timedelta(hours=1))
    when = datetime(2026, 11, 24, 20, 0, 0, 120, tzinfo=stockholm)
    assert utc_text(when) == "2026-11-24T19:00:00.000120Z"
    assert read_time(utc_text(when)) == when
    assert iso(when) == "2026-11-24T19:00:00.000120Z"
    assert normalized("2026-11-24T19:00:00.123Z") == "2026-11-24T19:00:00.123000Z"
    assert normalized("2026-11-24T20:00:00+01:00") == "2026-11-24T19:00:00.000000Z"
    assert normalized("not a time") == "not a time"


def test_a_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="naive datetime"):
        utc_text(datetime(2026, 11, 24))  # a naive time: the point of the test


def test_json_output_writes_a_stray_datetime_in_the_one_format(
    capsys: pytest.CaptureFixture[str],
) -> None:
    emit_json({"at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)})
    assert '"at": "2026-01-02T03:04:05.000000Z"' in capsys.readouterr().out


def test_a_row_inserted_without_created_at_gets_microseconds(
    config: Config, engine: Engine
) -> None:
    """Another program's INSERT takes created_at from SQLite's clock (milliseconds): the
    migration pads it, so that it sorts as text among the daemon's own times."""
    con = sqlite3.connect(Path(config.home.db_file))
    con.execute("INSERT INTO training_requests (payload, status) VALUES ('{}', 'pending')")
    con.execute(
        "INSERT INTO training_requests (payload, status, created_at) "
        "VALUES ('{}', 'pending', '2026-11-24T19:00:00.123Z')"
    )
    con.commit()
    [(first,), (second,)] = con.execute("SELECT created_at FROM training_requests ORDER BY id")
    assert FORMAT.fullmatch(first), first
    assert second == "2026-11-24T19:00:00.123000Z"


def test_human_text_and_age_are_what_a_person_reads() -> None:
    from oneseekd.times import human_age, human_text

    stockholm = timezone(timedelta(hours=1))
    when = datetime(2026, 11, 24, 20, 0, 0, 120, tzinfo=stockholm)
    assert human_text(when) == "2026-11-24 19:00:00"
    assert human_text("2026-11-24T19:00:00.000120Z") == "2026-11-24 19:00:00"
    assert human_text(datetime(2026, 11, 24, 19, 0, 0)) == "2026-11-24 19:00:00"
    assert human_text(None) == "-"
    now = datetime(2026, 11, 24, 19, 0, 0, tzinfo=UTC)
    assert human_age(now - timedelta(seconds=4), now) == "4s ago"
    assert human_age(now - timedelta(minutes=2, seconds=5), now) == "2 min ago"
    assert human_age(now - timedelta(hours=3), now) == "3 h ago"
    assert human_age(now - timedelta(days=1, hours=2), now) == "1 day ago"
    assert human_age(utc_text(now - timedelta(days=3)), now) == "3 days ago"
