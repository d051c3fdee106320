"""oneseekctl db upgrade."""

from __future__ import annotations

import click

from oneseekd.cli.context import Context, emit_json, json_option
from oneseekd.db.engine import make_engine
from oneseekd.db.migrate import upgrade


@click.group("db")
def db_group() -> None:
    """The state database."""


@db_group.command("upgrade")
@json_option
@click.pass_obj
def upgrade_cmd(obj: Context, as_json: bool) -> None:
    """Apply the Alembic migrations in migrations/ (the daemon also does this at start)."""
    obj.create = True  # this command, like oneseekd, makes a new home
    engine = make_engine(obj.config.db_url)
    revision = upgrade(engine)
    if as_json:
        emit_json(
            {
                "from": revision.current,
                "to": revision.head,
                "changed": revision.verdict != "current",
            }
        )
    elif revision.verdict == "current":
        click.echo(f"The database is already at the newest revision ({revision.head}).")
    else:
        click.echo(f"Upgraded the database from {revision.current or 'empty'} to {revision.head}.")
