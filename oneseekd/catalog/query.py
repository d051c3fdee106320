"""Questions asked of the catalog table: which model a requested name means, and whether it
can be trained."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, select

from oneseekd.catalog.scan import RESERVED, Root, model_roots
from oneseekd.config import Config, HomePaths, load_config
from oneseekd.db.engine import read_session
from oneseekd.db.models import BaseModel
from oneseekd.errors import ModelResolutionError, OneseekError
from oneseekd.naming import Match, match_model, normalize_model_name

NOT_SCANNED = "another program wrote this row, and it is never used"


@dataclass(frozen=True)
class Resolved:
    match: Match
    model: BaseModel


def home_roots(paths: HomePaths) -> list[Root]:
    """The model roots of a home as its oneseekd.toml configures them now; the home's own
    roots alone when the file cannot be read (fewer roots only ever refuse more rows)."""
    try:
        return model_roots(load_config(paths.root, db_url="sqlite://"))
    except OneseekError:
        return model_roots(Config(home=paths, db_url="sqlite://"))


def _inside_a_root(path: Path, roots: Sequence[Root]) -> bool:
    """Whether a resolved folder is one the scan could have found: below a root, and under
    models/ not in one of oneseekd's own folders."""
    for root in roots:
        top = root.resolved
        if not path.is_relative_to(top) or path == top:
            continue
        first = path.relative_to(top).parts[0]
        if root.kind == "models" and (first.lower() in RESERVED or first.startswith(".")):
            continue
        return True
    return False


def untrusted_problem(row: BaseModel, roots: Sequence[Root]) -> str | None:
    """Why a catalog row is not one the scan wrote, or None. Other programs can write the
    table: a key that is not a normalized name would be used in checkpoint and artifact
    paths, and a path outside the model roots is a folder the scan never found."""
    if not row.key or normalize_model_name(row.key) != row.key:
        return f"{row.key!r}, which is not a normalized name (not a catalog key); {NOT_SCANNED}"
    path = Path(row.path)
    try:
        inside = path.is_absolute() and _inside_a_root(path.resolve(), roots)
    except (OSError, RuntimeError, ValueError):  # a loop, a NUL byte
        inside = False
    if not inside:
        return f"{row.key}, whose path {row.path!r} is outside the model roots; {NOT_SCANNED}"
    return None


def usable_problem(row: BaseModel, roots: Sequence[Root]) -> str | None:
    """Why a catalog model cannot be trained now, or None."""
    untrusted = untrusted_problem(row, roots)
    if untrusted:
        return untrusted
    if not row.enabled:
        return f"{row.key} is disabled in the catalog; enable it (admin panel) to train it"
    if row.state != "ready":
        reason = f": {row.state_reason}" if row.state_reason else ""
        return f"{row.key} is {row.state}{reason}"
    return None


def resolve_names(
    engine: Engine,
    names: Iterable[str],
    roots: Sequence[Root],
    *,
    require_usable: bool = True,
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
        problem = usable_problem(row, roots) if require_usable else untrusted_problem(row, roots)
        if problem:
            problems.append(f"{name!r} resolves to {problem}")
            continue
        resolved.append(Resolved(match, row))
    if len(problems) == 1:
        raise ModelResolutionError(problems[0])
    if problems:
        raise ModelResolutionError(
            f"{len(problems)} of the requested model names cannot be used", problems
        )
    return resolved
