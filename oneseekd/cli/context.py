"""What every oneseekctl command shares: the configuration, the database, the output."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click

from oneseekd.config import Config, load_config
from oneseekd.errors import DatabaseError
from oneseekd.lock import LockState, probe
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

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load_config(self.home, self.db_url)
        return self._config

    def daemon(self) -> LockState:
        return probe(self.config.home.lock_file)

    def engine(self) -> Engine:
        """The database, created when new; an outdated one is left to `db upgrade`."""
        if self._engine is None:
            from oneseekd.db.engine import make_engine
            from oneseekd.db.migrate import check_revision, upgrade

            engine = make_engine(self.config.db_url)
            revision = check_revision(engine)
            if revision.verdict == "empty":
                upgrade(engine)
            elif revision.verdict == "behind":
                raise DatabaseError(
                    f"the database is at revision {revision.current}; this oneseekctl needs "
                    f"{revision.head}",
                    ["run `oneseekctl db upgrade` (or start oneseekd, which upgrades it)"],
                )
            self._engine = engine
        return self._engine

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
