"""A row INSERTed without created_at gets its time in the one format, with microseconds.

SQLite's clock gives milliseconds only ('...T19:00:00.123Z'), while every other time is
written with microseconds ('...T19:00:00.123456Z'): text order, which is time order for one
fixed width, broke within a millisecond. A trigger pads such a default to the fixed width.
PostgreSQL's default already has microseconds.

Revision ID: 0005_request_time_micro
Revises: 0004_hosts_leases
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0005_request_time_micro"
down_revision = "0004_hosts_leases"
branch_labels = None
depends_on = None

_TRIGGER = "training_requests_created_at_micro"


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    op.execute(
        f"""
        CREATE TRIGGER {_TRIGGER} AFTER INSERT ON training_requests
        WHEN length(NEW.created_at) = 24 AND NEW.created_at LIKE '____-__-__T__:__:__.___Z'
        BEGIN
            UPDATE training_requests SET created_at = substr(NEW.created_at, 1, 23) || '000Z'
            WHERE id = NEW.id;
        END
        """
    )
    op.execute(
        "UPDATE training_requests SET created_at = substr(created_at, 1, 23) || '000Z' "
        "WHERE length(created_at) = 24 AND created_at LIKE '____-__-__T__:__:__.___Z'"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute(f"DROP TRIGGER IF EXISTS {_TRIGGER}")
