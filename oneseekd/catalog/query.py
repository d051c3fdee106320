"""Questions asked of the catalog table: which model a requested name means, and whether it
can be trained."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, select

from oneseekd.catalog.scan import RESERVED, Root, model_roots
from oneseekd.config import Config, load_config
from oneseekd.db.engine import read_session
from oneseekd.db.models import BaseModel
from oneseekd.errors import ModelResolutionError, OneseekError
from oneseekd.home import HomePaths
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


def untrusted_problem(row: BaseModel, roots: Sequence[Root] | None) -> str | None:
    """Why a catalog row is not one the scan wrote, or None. Other programs can write the
    table: a key that is not a normalized name would be used in checkpoint and artifact
    paths, and a path outside the model roots is a folder the scan never found. `roots` None:
    the row is another host's, whose path only that host can check (its daemon and trainer
    do, before training from it)."""
    if not row.key or normalize_model_name(row.key) != row.key:
        return f"{row.key!r}, which is not a normalized name (not a catalog key); {NOT_SCANNED}"
    if roots is None:
        return None
    path = Path(row.path)
    try:
        inside = path.is_absolute() and _inside_a_root(path.resolve(), roots)
    except (OSError, RuntimeError, ValueError):  # a loop, a NUL byte
        inside = False
    if not inside:
        return f"{row.key}, whose path {row.path!r} is outside the model roots; {NOT_SCANNED}"
    return None


def roots_for(row: BaseModel, roots: Sequence[Root], host: str | None) -> Sequence[Root] | None:
    """The roots a row's path is checked against: this host's for its own rows (and for every
    row when no host is given), none for another host's."""
    return roots if host is None or row.host == host else None


def usable_problem(row: BaseModel, roots: Sequence[Root] | None) -> str | None:
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


def by_key(
    rows: Iterable[BaseModel], roots: Sequence[Root], prefer_host: str | None = None
) -> dict[str, BaseModel]:
    """The catalog as names are resolved against it: the union of every host's rows, one per
    key. A key is known if any host has it; its row is a usable one if any host's is, this
    host's before another's."""
    best: dict[str, BaseModel] = {}

    def rank(row: BaseModel) -> tuple[bool, bool, str]:
        problem = usable_problem(row, roots_for(row, roots, prefer_host))
        return (problem is not None, row.host != prefer_host, row.host)

    for row in rows:
        if row.key not in best or rank(row) < rank(best[row.key]):
            best[row.key] = row
    return best


def usable_by_host(
    rows: Iterable[BaseModel], roots: Sequence[Root], host: str | None
) -> dict[str, set[str]]:
    """The keys each host can train now (its usable rows), by host name."""
    have: dict[str, set[str]] = {}
    for row in rows:
        if usable_problem(row, roots_for(row, roots, host)) is None:
            have.setdefault(row.host, set()).add(row.key)
    return have


def resolve_one(
    name: str,
    rows: dict[str, BaseModel],
    roots: Sequence[Root],
    host: str | None,
    require_usable: bool = True,
) -> Resolved:
    """The row of `rows` (one a key) that `name` resolves to; ModelResolutionError says why
    there is none, or why it cannot be used (untrusted only, without `require_usable`)."""
    match = match_model(name, rows)
    row = rows[match.key]
    checked = roots_for(row, roots, host)
    problem = usable_problem(row, checked) if require_usable else untrusted_problem(row, checked)
    if problem:
        raise ModelResolutionError(f"{name!r} resolves to {problem}")
    return Resolved(match, row)


def resolve_names(
    engine: Engine,
    names: Iterable[str],
    roots: Sequence[Root],
    *,
    require_usable: bool = True,
    prefer_host: str | None = None,
) -> list[Resolved]:
    """Resolve every name against the models present (not `missing`) on any host; report all
    problems."""
    with read_session(engine) as session:
        rows = by_key(
            session.scalars(select(BaseModel).where(BaseModel.state != "missing")),
            roots,
            prefer_host,
        )
    resolved: list[Resolved] = []
    problems: list[str] = []
    for name in names:
        try:
            resolved.append(resolve_one(name, rows, roots, prefer_host, require_usable))
        except ModelResolutionError as exc:
            problems.append(exc.message)
    if len(problems) == 1:
        raise ModelResolutionError(problems[0])
    if problems:
        raise ModelResolutionError(
            f"{len(problems)} of the requested model names cannot be used", problems
        )
    return resolved
