"""Each model's training within a run, every artifact with its sha256, and the signed,
hash-chained ledger with the public keys that verify it.

Revision ID: 0003_training_ledger
Revises: 0002_requests_runs
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_training_ledger"
down_revision = "0002_requests_runs"
branch_labels = None
depends_on = None

_TIME = sa.String(32)  # ISO-8601 UTC text, see oneseekd.db.models.UTCDateTime


def upgrade() -> None:
    op.create_table(
        "model_trainings",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("model_key", sa.String(200), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("state", sa.String(20), nullable=False, server_default="pending"),
        sa.Column("epochs_done", sa.Integer, nullable=False, server_default="0"),
        sa.Column("train_losses", sa.Text),
        sa.Column("val_losses", sa.Text),
        sa.Column("weight", sa.Float),
        sa.Column("steps", sa.Integer, nullable=False, server_default="0"),
        sa.Column("tokens", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("seconds", sa.Float, nullable=False, server_default="0"),
        sa.Column("started_at", _TIME),
        sa.Column("finished_at", _TIME),
        sa.UniqueConstraint("run_id", "model_key", name="uq_model_trainings_run_model"),
        sa.CheckConstraint(
            "state IN ('pending', 'training', 'trained', 'failed')", name="ck_model_trainings_state"
        ),
    )
    op.create_table(
        "artifacts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE")),
        sa.Column("model_key", sa.String(200)),
        sa.Column("path", sa.Text, nullable=False, unique=True),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
    )
    op.create_index("ix_artifacts_run_id", "artifacts", ["run_id"])
    op.create_table(
        "ledger_keys",
        sa.Column("key_id", sa.String(64), primary_key=True),
        sa.Column("algorithm", sa.String(20), nullable=False, server_default="ed25519"),
        sa.Column("public_key", sa.Text, nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
    )
    op.create_table(
        "ledger_events",
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("at", _TIME, nullable=False),
        sa.Column("event", sa.String(60), nullable=False),
        sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="SET NULL")),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False, unique=True),
        sa.Column("key_id", sa.String(64), sa.ForeignKey("ledger_keys.key_id"), nullable=False),
        sa.Column("signature", sa.String(128), nullable=False),
    )
    op.create_index("ix_ledger_events_run_id", "ledger_events", ["run_id"])


def downgrade() -> None:
    op.drop_index("ix_ledger_events_run_id", table_name="ledger_events")
    op.drop_table("ledger_events")
    op.drop_table("ledger_keys")
    op.drop_index("ix_artifacts_run_id", table_name="artifacts")
    op.drop_table("artifacts")
    op.drop_table("model_trainings")
