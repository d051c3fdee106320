"""What every oneseekctl command shares: the configuration, the database, the output."""

from __future__ import annotations

import errno
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from oneseekd.config import Config, load_config
from oneseekd.daemon.lock import LockState, probe
from oneseekd.errors import ConfigError, DatabaseError, OneseekError
from oneseekd.times import utc_text

if TYPE_CHECKING:
    from sqlalchemy import Engine

# SQLAlchemy, the catalog and the migrations are imported where they are used: the read
# commands (oneseekd/cli/read.py) answer without them.


@dataclass
class Context:
    home: str | None
    db_url: str | None
    _config: Config | None = field(default=None, init=False)
    _engine: Engine | None = field(default=None, init=False)

    create: bool = field(default=False, init=False)  # `db upgrade` may create a new home
    # `submit` may create the database of a prepared home (one with models/), whose daemon
    # then takes the run; every read command refuses a folder without a database
    create_database: bool = field(default=False, init=False)

    @property
    def config(self) -> Config:
        if self._config is None:
            config = load_config(self.home, self.db_url)
            root = config.home.root
            if not self.create and not root.exists():
                # a typo must not become a new, empty home that reports 0 models
                raise ConfigError(
                    f"the home {root} does not exist",
                    [
                        "check --home / ONESEEK_HOME for a typo",
                        f"to make a new home there, run `oneseekd --home {root}` or "
                        f"`oneseekctl --home {root} db upgrade`",
                    ],
                )
            self._config = config
        return self._config

    def daemon(self) -> LockState:
        return probe(self.config.home.lock_file)

    def engine(self) -> Engine:
        """The database. Only `db upgrade` (and the daemon) create or migrate one: every other
        command refuses a folder without one, so that a mistyped --home never becomes a home."""
        if self._engine is None:
            self.require_database()
            from oneseekd.db.engine import make_engine
            from oneseekd.db.migrate import check_revision, upgrade

            engine = make_engine(
                self.config.db_url, lease_seconds=self.config.trainer.lease_seconds
            )
            revision = check_revision(engine)
            if revision.verdict == "empty":
                if not (self.create or self.create_database):
                    engine.dispose()
                    raise not_a_home(self.config.home.root, "its database is empty")
                upgrade(engine)
            elif revision.verdict == "behind":
                raise DatabaseError(
                    f"the database is at revision {revision.current}; this oneseekctl needs "
                    f"{revision.head}",
                    ["run `oneseekctl db upgrade` (or start oneseekd, which upgrades it)"],
                )
            self._engine = engine
        return self._engine

    def require_database(self) -> None:
        """Refuse a home whose SQLite database file does not exist, before anything opens (and
        so creates) it; `db upgrade` (create=True) makes it."""
        if self.create or self.create_database:
            return
        db_file = sqlite_file(self.config.db_url)
        if db_file is not None and not db_file.exists():
            raise not_a_home(self.config.home.root, f"there is no database {db_file}")

    def fresh_catalog(self) -> bool:
        """With no daemon keeping the catalog current, scan the model folders now.

        Returns True when this command scanned, False when the daemon's catalog is used."""
        if self.daemon().held:
            return False
        from oneseekd.catalog.live import Catalog
        from oneseekd.catalog.scan import model_roots

        cfg = self.config
        catalog = Catalog(
            self.engine(), model_roots(cfg), cfg.catalog.settle_seconds, host=cfg.catalog.host
        )
        catalog.full_scan()
        return True


def sqlite_file(db_url: str) -> Path | None:
    """The file of a SQLite URL (`sqlite:///PATH`, options after `?` aside); None for an
    in-memory one or another database."""
    prefix = "sqlite:///"
    if not db_url.startswith(prefix):
        return None
    path = db_url.removeprefix(prefix).split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def not_a_home(root: Path, why: str) -> ConfigError:
    return ConfigError(
        f"{root} is not a oneseekd home: {why}",
        [
            "check --home / ONESEEK_HOME for a typo",
            f"to make it a home, start oneseekd there (`oneseekd --home {root}`) or run "
            f"`oneseekctl --home {root} db upgrade`",
        ],
    )


# every command that can answer a script: one flag, one wording
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


def _json_default(value: Any) -> Any:
    # a time that reached the output unformatted still reads in the one format
    return utc_text(value) if isinstance(value, datetime) else str(value)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=_json_default))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join(lines)


def human_count(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


# --- failures of the machine, not of the command: an `Error:` line with the fix ----------------
_SQLITE_FIXES = (
    (
        "readonly database",
        "is read-only",
        "give this user write permission on {path} and its folder (SQLite also writes "
        "{name}-wal and {name}-shm beside it), or run oneseekctl as the daemon's user",
    ),
    (
        "disk is full",
        "cannot be written: the disk is full",
        "free space on the file system that holds {path}, then run the command again",
    ),
    (
        "unable to open database file",
        "cannot be opened",
        "check that {path} and its folder exist and that this user may read and write them",
    ),
    (
        "file is not a database",
        "is damaged",
        "restore {path} from a backup, or move it away and start oneseekd to create a new one",
    ),
    (
        "malformed",
        "is damaged",
        "restore {path} from a backup, or move it away and start oneseekd to create a new one",
    ),
)


def machine_error(exc: BaseException, context: Context) -> OneseekError | None:
    """A database or file system failure (read-only, full disk, damaged file) as the error a
    user reads, exit status 3; None for anything else (a bug: its traceback is wanted)."""
    import sys

    sqlalchemy_exc = sys.modules.get("sqlalchemy.exc")  # never loaded: no SQLAlchemy error
    if sqlalchemy_exc is not None and isinstance(exc, sqlalchemy_exc.SQLAlchemyError):
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        where = _database_path(context)
        name = where.rsplit("/", 1)[-1]
        for needle, what, fix in _SQLITE_FIXES:
            if needle in reason:
                return DatabaseError(
                    f"the database {where} {what} ({reason})",
                    [fix.format(path=where, name=name)],
                )
        return DatabaseError(
            f"the database {where} cannot be used ({reason})",
            ["check --db-url / ONESEEK_DB_URL, the file's permissions and free disk space"],
        )
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DatabaseError(
            f"cannot write {exc.filename or 'a file'}: the disk is full ({exc.strerror})",
            ["free space on that file system, then run the command again"],
        )
    if isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return DatabaseError(
            f"cannot write {exc.filename or 'a file'}: {exc.strerror}",
            ["give this user write permission there, or run oneseekctl as the daemon's user"],
        )
    return None


def _database_path(context: Context) -> str:
    from sqlalchemy.engine import make_url

    try:
        url = make_url(context.config.db_url)
    except OneseekError:
        return "(the configured database)"
    if url.get_backend_name() == "sqlite" and url.database:
        return url.database
    return url.render_as_string(hide_password=True)
