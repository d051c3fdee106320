"""The one way a run is named on the command line, for `show`, `logs`, `cancel` and `promote`.

An operator names a run by what they have in front of them: the run id from `runs`
(`run-20261124-190000-318fcc`), the DNA from a certified folder
(`OneSeek-7B-Zero.v1.2.318fcc`), the version they talk about (`v1.2` or `1.2`), the last
characters of either (`318fcc`), `latest` (the newest run) or `current` (the run the CURRENT
pointer names). The row number `runs --json` shows (`id`) is still taken too. A name that
could mean several runs is refused with the candidates, never a silent pick.

Light, like the read commands (oneseekd/cli/read.py): the runs table through the reader, and
the certified layout's links for DNAs; no SQLAlchemy ORM.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from oneseekd.certify.layout import certified_run_id, current_summary, is_dna, run_dna
from oneseekd.cli.read import RUN_COLUMNS, Reader, Row
from oneseekd.errors import RunNotFound
from oneseekd.home import HomePaths

LATEST = "latest"
CURRENT = "current"
_VERSION = re.compile(r"^v?(\d+\.\d+)$")
MAX_CANDIDATES = 10
# the forms a name takes, as errors and `--help` list them
FORMS = "a run id, a DNA, a version (v1.2), the end of either (318fcc), latest or current"
_LIST = "list the runs with `oneseekctl runs`"


@dataclass(frozen=True)
class Named:
    """The run a name resolved to, and how (`run_id`, `dna`, `version`, `suffix`, `latest`,
    `current`, `row`)."""

    run: Row
    how: str


def resolve_run(reader: Reader, paths: HomePaths, name: str) -> Named:
    """The one run `name` names; RunNotFound when it names none, or several (listed)."""
    text = name.strip()
    if not text:
        raise RunNotFound("no run named: the name is empty", [f"name {FORMS}", _LIST])
    lowered = text.lower()
    if lowered == LATEST:
        run = reader.one(f"SELECT {RUN_COLUMNS} FROM runs ORDER BY id DESC LIMIT 1")
        if run is None:
            raise RunNotFound("there is no run yet, so no latest one", [_submit_fix(paths)])
        return Named(run, LATEST)
    if lowered == CURRENT:
        return Named(_current(reader, paths), CURRENT)
    run = reader.one(f"SELECT {RUN_COLUMNS} FROM runs WHERE run_id = :name", name=text)
    if run is not None:
        return Named(run, "run_id")
    if is_dna(text):
        return Named(_by_dna(reader, paths, text), "dna")
    version = _VERSION.match(lowered)
    if version is not None:
        found = _by_version(reader, paths, version.group(1))
        if found is not None:
            return Named(found, "version")
    if text.isdigit():
        run = reader.one(f"SELECT {RUN_COLUMNS} FROM runs WHERE id = :pk", pk=int(text))
        if run is not None:
            return Named(run, "row")
    return Named(_by_suffix(reader, paths, text), "suffix")


def _current(reader: Reader, paths: HomePaths) -> Row:
    now = current_summary(paths)
    if now["dna"] is None:
        raise RunNotFound(
            f"no run is current: {now['problem']}",
            ["make a certified run current with `oneseekctl promote RUN`"],
        )
    return _by_dna(reader, paths, now["dna"])


def _by_dna(reader: Reader, paths: HomePaths, dna: str) -> Row:
    """The run of a DNA: its certified folder's oneseek_dna.json names it; else the run whose
    <run_id> link names the DNA."""
    run_id = certified_run_id(paths, dna)
    run = None
    if run_id is not None:
        run = reader.one(f"SELECT {RUN_COLUMNS} FROM runs WHERE run_id = :r", r=run_id)
    if run is None:
        version = dna.removeprefix("OneSeek-7B-Zero.v").rsplit(".", 1)[0]
        run = next(
            (r for r in _with_version(reader, version) if run_dna(paths, r.run_id) == dna), None
        )
    if run is None:
        raise RunNotFound(
            f"no run has the DNA {dna}",
            [f"{_LIST} (the DNA column); a DNA reads OneSeek-7B-Zero.v<version>.<6 hex>"],
        )
    return run


def _with_version(reader: Reader, version: str) -> list[Row]:
    return reader.rows(
        f"SELECT {RUN_COLUMNS} FROM runs WHERE version = :v ORDER BY id DESC", v=version
    )


def _by_version(reader: Reader, paths: HomePaths, version: str) -> Row | None:
    """The run with that version; of several (a failed run's version asked for again), the one
    that succeeded. None when no run has it."""
    runs = _with_version(reader, version)
    if len(runs) > 1:
        runs = [r for r in runs if r.state == "succeeded"] or runs
    if len(runs) > 1:
        raise _ambiguous(f"version {version}", runs, paths)
    return runs[0] if runs else None


def _by_suffix(reader: Reader, paths: HomePaths, text: str) -> Row:
    """The runs whose id or DNA ends with `text`: exactly one, or refused."""
    lowered = text.lower()
    found = []
    for run in reader.rows(f"SELECT {RUN_COLUMNS} FROM runs ORDER BY id DESC"):
        dna = run_dna(paths, run.run_id) or ""
        if run.run_id.lower().endswith(lowered) or (dna and dna.lower().endswith(lowered)):
            found.append(run)
    if len(found) == 1:
        return found[0]
    if found:
        raise _ambiguous(repr(text), found, paths)
    raise RunNotFound(f"no run {text!r}", [f"name {FORMS}", _LIST])


def _ambiguous(what: str, runs: list[Row], paths: HomePaths) -> RunNotFound:
    shown = [_candidate(r, paths) for r in runs[:MAX_CANDIDATES]]
    if len(runs) > MAX_CANDIDATES:
        shown.append(f"... and {len(runs) - MAX_CANDIDATES} more")
    return RunNotFound(
        f"{what} names {len(runs)} runs; name one of them by its run id or DNA",
        shown,
    )


def _candidate(run: Row, paths: HomePaths) -> str:
    dna = run_dna(paths, run.run_id)
    return f"{run.run_id} (v{run.version}, {run.state}" + (f", {dna})" if dna else ")")


def _submit_fix(paths: HomePaths) -> str:
    return f"submit one with `oneseekctl submit` or drop a request file into {paths.requests}/"
