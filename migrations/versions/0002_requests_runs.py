"""Training requests from every door, the runs they become, and each run's state changes.

Revision ID: 0002_requests_runs
Revises: 0001_catalog
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_requests_runs"
down_revision = "0001_catalog"
branch_labels = None
depends_on = None

_TIME = sa.String(32)  # ISO-8601 UTC text, see oneseekd.db.models.UTCDateTime


def _now_default() -> sa.TextClause:
    """Rows INSERTed by other programs get their time from the database."""
    if op.get_bind().dialect.name == "sqlite":
        return sa.text("(strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))")
    return sa.text("(to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'))")


def upgrade() -> None:
    op.create_table(
        "training_requests",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("status", sa.String(20), nullable=False, server_default="pending"),
        sa.Column("source", sa.String(20), nullable=False, server_default="database"),
        sa.Column("source_name", sa.Text),
        sa.Column("claim", sa.String(100), unique=True),
        sa.Column("content_sha256", sa.String(64)),
        sa.Column("request_key", sa.String(200)),
        sa.Column("error", sa.Text),
        sa.Column("problems", sa.Text),
        sa.Column("run_id", sa.Integer),
        sa.Column("duplicate_of", sa.Integer, sa.ForeignKey("training_requests.id")),
        sa.Column("created_at", _TIME, nullable=False, server_default=_now_default()),
        sa.Column("decided_at", _TIME),
        sa.CheckConstraint(
            "status IN ('pending', 'queued', 'rejected', 'duplicate')",
            name="ck_training_requests_status",
        ),
    )
    op.create_index(
        "ix_training_requests_pending",
        "training_requests",
        ["id"],
        sqlite_where=sa.text("status = 'pending'"),
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_index("ix_training_requests_sha", "training_requests", ["content_sha256"])
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("run_id", sa.String(64), nullable=False, unique=True),
        sa.Column("request_id", sa.Integer, sa.ForeignKey("training_requests.id"), nullable=False),
        sa.Column("request_key", sa.String(200), unique=True),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
        sa.Column("version", sa.String(20), nullable=False),
        sa.Column("base_models", sa.Text, nullable=False),
        sa.Column("fingerprints", sa.Text, nullable=False),
        sa.Column("dataset", sa.Text, nullable=False),
        sa.Column("config", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("daemon_id", sa.Integer, sa.ForeignKey("daemons.id")),
        sa.Column("pid", sa.Integer),
        sa.Column("heartbeat_at", _TIME),
        sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("outcome", sa.String(20)),
        sa.Column("exit_code", sa.Integer),
        sa.Column("error", sa.Text),
        sa.Column("log_path", sa.Text),
        sa.Column("progress", sa.Text),
        sa.Column("queued_at", _TIME, nullable=False),
        sa.Column("started_at", _TIME),
        sa.Column("finished_at", _TIME),
        sa.CheckConstraint(
            "state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')",
            name="ck_runs_state",
        ),
    )
    # Exactly one run at a time, enforced by the database itself.
    op.create_index(
        "uq_runs_one_running",
        "runs",
        ["state"],
        unique=True,
        sqlite_where=sa.text("state = 'running'"),
        postgresql_where=sa.text("state = 'running'"),
    )
    # A version is taken by any run that is not failed or cancelled.
    op.create_index(
        "uq_runs_live_version",
        "runs",
        ["version"],
        unique=True,
        sqlite_where=sa.text("state IN ('queued', 'running', 'succeeded')"),
        postgresql_where=sa.text("state IN ('queued', 'running', 'succeeded')"),
    )
    op.create_index("ix_runs_queue", "runs", ["state", "priority", "id"])
    op.create_table(
        "run_events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("at", _TIME, nullable=False),
        sa.Column("old_state", sa.String(20)),
        sa.Column("new_state", sa.String(20), nullable=False),
        sa.Column("detail", sa.Text),
    )
    op.create_index("ix_run_events_run_id", "run_events", ["run_id"])


def downgrade() -> None:
    op.drop_index("ix_run_events_run_id", table_name="run_events")
    op.drop_table("run_events")
    op.drop_index("ix_runs_queue", table_name="runs")
    op.drop_index("uq_runs_live_version", table_name="runs")
    op.drop_index("uq_runs_one_running", table_name="runs")
    op.drop_table("runs")
    op.drop_index("ix_training_requests_sha", table_name="training_requests")
    op.drop_index("ix_training_requests_pending", table_name="training_requests")
    op.drop_table("training_requests")
