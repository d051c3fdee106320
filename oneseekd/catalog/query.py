"""Questions asked of the catalog table: which model a requested name means, and whether it
can be trained."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Engine, select

from oneseekd.db.engine import read_session
from oneseekd.db.models import BaseModel
from oneseekd.errors import ModelResolutionError
from oneseekd.naming import Match, match_model


@dataclass(frozen=True)
class Resolved:
    match: Match
    model: BaseModel


def usable_problem(row: BaseModel) -> str | None:
    """Why a catalog model cannot be trained now, or None."""
    if not row.enabled:
        return f"{row.key} is disabled in the catalog; enable it (admin panel) to train it"
    if row.state != "ready":
        reason = f": {row.state_reason}" if row.state_reason else ""
        return f"{row.key} is {row.state}{reason}"
    return None


def by_key(rows: Iterable[BaseModel], prefer_host: str | None = None) -> dict[str, BaseModel]:
    """The catalog as names are resolved against it: the union of every host's rows, one per
    key. A key is known if any host has it; its row is a usable one if any host's is, this
    host's before another's."""
    best: dict[str, BaseModel] = {}

    def rank(row: BaseModel) -> tuple[bool, bool, str]:
        return (usable_problem(row) is not None, row.host != prefer_host, row.host)

    for row in rows:
        if row.key not in best or rank(row) < rank(best[row.key]):
            best[row.key] = row
    return best


def hosts_with(rows: Iterable[BaseModel], keys: list[str]) -> list[str]:
    """The hosts on which every one of the keys is usable, sorted by name."""
    have: dict[str, set[str]] = {}
    for row in rows:
        if usable_problem(row) is None:
            have.setdefault(row.host, set()).add(row.key)
    return sorted(host for host, got in have.items() if set(keys) <= got)


def resolve_names(
    engine: Engine,
    names: Iterable[str],
    *,
    require_usable: bool = True,
    prefer_host: str | None = None,
) -> list[Resolved]:
    """Resolve every name against the models present (not `missing`) on any host; report all
    problems."""
    with read_session(engine) as session:
        rows = by_key(
            session.scalars(select(BaseModel).where(BaseModel.state != "missing")), prefer_host
        )
    resolved: list[Resolved] = []
    problems: list[str] = []
    for name in names:
        try:
            match = match_model(name, rows)
        except ModelResolutionError as exc:
            problems.append(exc.message)
            continue
        row = rows[match.key]
        problem = usable_problem(row) if require_usable else None
        if problem:
            problems.append(f"{name!r} resolves to {problem}")
        resolved.append(Resolved(match, row))
    if len(problems) == 1:
        raise ModelResolutionError(problems[0])
    if problems:
        raise ModelResolutionError(
            f"{len(problems)} of the requested model names cannot be used", problems
        )
    return resolved
