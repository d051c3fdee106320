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


def resolve_names(
    engine: Engine, names: Iterable[str], *, require_usable: bool = True
) -> list[Resolved]:
    """Resolve every name against the models present (not `missing`); report all problems."""
    with read_session(engine) as session:
        rows = {
            r.key: r for r in session.scalars(select(BaseModel).where(BaseModel.state != "missing"))
        }
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
