"""oneseekctl requests: the recent verdicts of every door, and `status`'s `rejected:` line.

A refused file ends in requests/rejected/ and a refused row keeps its verdict in the database:
neither is seen unless someone looks. This lists what came in, by which door, when, and what
became of it (the run it queued, or the first problem), newest first. Light like the other
read commands (oneseekd/cli/read.py): on a SQLite home it imports no SQLAlchemy. A request
naming `hf:ORG/NAME` whose model is being downloaded is `pending`, waiting for download-N.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import click

from oneseekd.cli.context import Context, emit_json, json_option
from oneseekd.cli.display import iso, shown, shown_table
from oneseekd.cli.read import Reader, Row, open_reader
from oneseekd.times import human_age, human_text, utcnow

# a refusal older than this is no longer news on `status`
RECENT = timedelta(hours=24)
PROBLEM_SHOWN = 120  # characters of the first problem in a table cell or on status's line
STATUSES = ("pending", "queued", "rejected", "duplicate")
REFUSED = ("rejected", "duplicate")

_SELECT = (
    "SELECT t.id, t.source, t.source_name, t.status, t.created_at, t.decided_at, t.problems, "
    "r.run_id AS run, first_run.run_id AS duplicate_of_run, t.download_id, "
    "d.repository AS download_repository, d.status AS download_status "
    "FROM training_requests t "
    "LEFT JOIN runs r ON r.id = t.run_id "
    "LEFT JOIN model_downloads d ON d.id = t.download_id "
    "LEFT JOIN training_requests f ON f.id = t.duplicate_of "
    "LEFT JOIN runs first_run ON first_run.id = f.run_id "
)


def recent_requests(reader: Reader, limit: int, status: str | None = None) -> list[Row]:
    where = "" if status is None else "WHERE t.status = :status "
    return reader.rows(
        f"{_SELECT}{where}ORDER BY t.id DESC LIMIT :limit", status=status, limit=limit
    )


def verdict_dict(row: Row) -> dict[str, Any]:
    """One request as `--json` prints it: times in the one format, every problem."""
    problems = row.problems if isinstance(row.problems, list) else []
    return {
        "request": row.id,
        "door": row.source,
        "name": row.source_name,
        "status": row.status,
        "created_at": iso(row.created_at),
        "decided_at": iso(row.decided_at),
        "run_id": row.run,
        "duplicate_of_run": row.duplicate_of_run,
        "problem": str(problems[0]) if problems else None,
        "problems": problems,
        "download": row.download_id,
        "waiting_for": waiting_for(row),
    }


def waiting_for(row: Row) -> str | None:
    """`download-3 (ORG/NAME), running`: the download a pending request waits for."""
    if row.status != "pending" or row.download_id is None:
        return None
    repository = row.download_repository or "a download no longer in the table"
    state = f", {row.download_status}" if row.download_status else ""
    return f"download-{row.download_id} ({repository}){state}"


def _named(data: dict[str, Any]) -> str:
    """A file by its name; a request without one by its door and number."""
    if data["name"]:
        return str(data["name"])
    door = "row" if data["door"] == "database" else data["door"]
    return f"{door} #{data['request']}"


def _cut(text: str, limit: int = PROBLEM_SHOWN) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def last_refusal(
    reader: Reader, now: datetime | None = None, within: timedelta = RECENT
) -> dict[str, Any] | None:
    """The newest rejected or duplicate request decided within `within` (a day), as
    verdict_dict gives it; None when there was none. `status` shows it with refusal_line."""
    row = reader.one(
        f"{_SELECT}WHERE t.status IN ('rejected', 'duplicate') ORDER BY t.id DESC LIMIT 1"
    )
    if row is None:
        return None
    at = row.decided_at or row.created_at
    if at is None or (now or utcnow()) - at > within:
        return None
    return verdict_dict(row)


def refusal_line(refusal: dict[str, Any], now: datetime | None = None) -> str:
    """`rejected: typo.json 2 min ago — unknown field 'epoch' (did you mean 'epochs'?)`:
    status's line for last_refusal's answer, escaped for a terminal."""
    when = human_age(refusal["decided_at"] or refusal["created_at"], now)
    problem = f" — {_cut(shown(refusal['problem']))}" if refusal["problem"] else ""
    return f"{refusal['status']}: {shown(_named(refusal))} {when}{problem}"


@click.command("requests", short_help="Recent requests from every door, their verdicts.")
@click.option("--limit", default=20, show_default=True, help="How many of the newest requests.")
@click.option(
    "--status",
    type=click.Choice(STATUSES),
    help="Only requests with this verdict (rejected, duplicate: the refused ones).",
)
@json_option
@click.pass_obj
def requests_cmd(obj: Context, limit: int, status: str | None, as_json: bool) -> None:
    """Recent requests from every door and their verdicts, newest first.

    Each dropped file, `submit` and row: when it came, by which door, the verdict (queued,
    rejected, duplicate, or pending while the daemon decides, or while the download of a
    model it names as hf:ORG/NAME runs), the run it queued or its first problem.
    NAME.error.json in requests/rejected/ has every problem of a file.

    \b
    oneseekctl requests
    oneseekctl requests --status rejected --json
    """
    rows = recent_requests(open_reader(obj)[0], limit, status)
    data = [verdict_dict(r) for r in rows]
    if as_json:
        emit_json(data)
        return
    if not data:
        click.echo(
            ("No requests yet" if status is None else f"No {status} requests")
            + f". Drop a request file into {obj.config.home.requests}/ or run "
            "`oneseekctl submit`."
        )
        return
    now = utcnow()
    click.echo(
        shown_table(
            ["#", "WHEN", "AGE", "DOOR", "NAME", "VERDICT", "RUN", "PROBLEM"],
            [
                [
                    d["request"],
                    human_text(d["decided_at"] or d["created_at"]),
                    human_age(d["decided_at"] or d["created_at"], now),
                    d["door"],
                    _named(d),
                    d["status"],
                    d["run_id"] or "-",
                    f"waiting for {_cut(d['waiting_for'])}"
                    if d["waiting_for"]
                    else _cut(d["problem"])
                    if d["problem"]
                    else "-",
                ]
                for d in data
            ],
        )
    )
