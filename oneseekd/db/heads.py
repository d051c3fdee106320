"""The newest migration, read from the scripts' text: no alembic, no SQLAlchemy.

alembic (with mako and every dialect's DDL) costs about 10 MB resident once imported, and
oneseekctl's light read path imports no SQLAlchemy at all. A database already at the newest
revision, the usual case, is recognised by comparing alembic_version with this.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

_ASSIGNMENT = re.compile(r"^(revision|down_revision)\s*(?::[^=]*)?=\s*(.+?)\s*$", re.MULTILINE)


def scripted_head() -> str | None:
    """The newest revision, read from the migration scripts' text without importing alembic;
    None when the scripts do not name exactly one head in the plain form this reads."""
    revisions: set[str] = set()
    parents: set[str] = set()
    # the package's folder, not importlib.resources (which costs oneseekctl ~10 ms to import)
    package = importlib.import_module("oneseekd_migrations")
    versions = Path(next(iter(package.__path__))) / "versions"
    for script in sorted(versions.iterdir()):
        if not script.name.endswith(".py") or script.name.startswith("__"):
            continue
        found = {m[1]: m[2] for m in _ASSIGNMENT.finditer(script.read_text("utf-8"))}
        revision, parent = found.get("revision"), found.get("down_revision")
        if revision is None or parent is None:
            return None
        revisions.add(revision.strip("\"'"))
        if parent != "None":
            parents.add(parent.strip("\"'"))
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None
