"""Alembic environment. oneseekd passes its own connection (config.attributes["connection"]);
`alembic -c alembic.ini upgrade head` in a checkout uses ONESEEK_DB_URL or alembic.ini's URL."""

from __future__ import annotations

import os

from alembic import context

from oneseekd.db.engine import foreign_keys_off, make_engine, writer
from oneseekd.db.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite cannot ALTER most things; batch mode copies the table
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = os.environ.get("ONESEEK_DB_URL") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("set ONESEEK_DB_URL or sqlalchemy.url in alembic.ini")
    engine = writer(make_engine(url))
    with engine.connect() as conn, foreign_keys_off(conn):
        _run(conn)


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
