"""Base models downloaded from the Hub: the `model_downloads` table and where a model came from.

`model_downloads` is a door like `training_requests`: `oneseekctl pull` and other programs (the
admin panel) INSERT a row naming a repository; the daemon claims it, downloads the model into
models/.incoming/, checks every byte, renames it into base_models/ and writes the outcome back
(docs/database.md). `base_models.source_repository` / `source_commit` record which repository
and commit a pulled folder holds (its `.oneseek-pull.json`), for `oneseekctl models` and the DNA.

Revision ID: 0008_model_downloads
Revises: 0007_daemon_identity
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_model_downloads"
down_revision = "0007_daemon_identity"
branch_labels = None
depends_on = None

_TIME = sa.String(32)  # ISO-8601 UTC text, see oneseekd.db.models.UTCDateTime
_TRIGGER = "model_downloads_created_at_micro"


def _now_default() -> sa.TextClause:
    """Rows INSERTed by other programs get their time from the database (as 0002's)."""
    if op.get_bind().dialect.name == "sqlite":
        return sa.text("(strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))")
    return sa.text("(to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'))")


def upgrade() -> None:
    op.create_table(
        "model_downloads",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("repository", sa.Text, nullable=False),
        sa.Column("revision", sa.String(200), nullable=False, server_default="main"),
        sa.Column("folder", sa.Text),
        sa.Column("allow_pickle", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("status", sa.String(20), nullable=False, server_default="pending"),
        sa.Column("source", sa.String(20), nullable=False, server_default="database"),
        sa.Column("host", sa.String(255)),
        sa.Column("pid", sa.Integer),
        sa.Column("commit", sa.String(64)),
        sa.Column("bytes_total", sa.BigInteger),
        sa.Column("bytes_done", sa.BigInteger),
        sa.Column("progress", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("problems", sa.Text),
        sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("model_key", sa.String(200)),
        sa.Column("created_at", _TIME, nullable=False, server_default=_now_default()),
        sa.Column("started_at", _TIME),
        sa.Column("finished_at", _TIME),
        sa.Column("heartbeat_at", _TIME),
        sa.CheckConstraint(
            "status IN ('pending', 'running', 'succeeded', 'failed', 'cancelled')",
            name="ck_model_downloads_status",
        ),
    )
    op.create_index("ix_model_downloads_status", "model_downloads", ["status", "id"])
    if op.get_bind().dialect.name == "sqlite":  # as 0005: one fixed width, microseconds
        op.execute(
            f"""
            CREATE TRIGGER {_TRIGGER} AFTER INSERT ON model_downloads
            WHEN length(NEW.created_at) = 24 AND NEW.created_at LIKE '____-__-__T__:__:__.___Z'
            BEGIN
                UPDATE model_downloads SET created_at = substr(NEW.created_at, 1, 23) || '000Z'
                WHERE id = NEW.id;
            END
            """
        )
    op.add_column("base_models", sa.Column("source_repository", sa.Text()))
    op.add_column("base_models", sa.Column("source_commit", sa.String(64)))


def downgrade() -> None:
    op.drop_column("base_models", "source_commit")
    op.drop_column("base_models", "source_repository")
    if op.get_bind().dialect.name == "sqlite":
        op.execute(f"DROP TRIGGER IF EXISTS {_TRIGGER}")
    op.drop_index("ix_model_downloads_status", "model_downloads")
    op.drop_table("model_downloads")
