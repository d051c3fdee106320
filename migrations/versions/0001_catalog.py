"""The model catalog, its history, and the daemons that kept it.

Revision ID: 0001_catalog
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_catalog"
down_revision = None
branch_labels = None
depends_on = None

_TIME = sa.String(32)  # ISO-8601 UTC text, see oneseekd.db.models.UTCDateTime


def upgrade() -> None:
    op.create_table(
        "base_models",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("key", sa.String(200), nullable=False, unique=True),
        sa.Column("display_name", sa.String(300), nullable=False),
        sa.Column("detected_name", sa.String(300), nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("root", sa.Text, nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("state_reason", sa.Text),
        sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("model_type", sa.String(100)),
        sa.Column("architectures", sa.Text),
        sa.Column("parameter_count", sa.BigInteger),
        sa.Column("size_bytes", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("weight_format", sa.String(40)),
        sa.Column("has_tokenizer", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("fingerprint", sa.String(64)),
        sa.Column("shadowed_paths", sa.Text),
        sa.Column("first_seen_at", _TIME, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.Column("state_changed_at", _TIME, nullable=False),
        sa.CheckConstraint(
            "state IN ('ready', 'incomplete', 'invalid', 'missing')", name="ck_base_models_state"
        ),
    )
    op.create_table(
        "catalog_events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "model_id",
            sa.Integer,
            sa.ForeignKey("base_models.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("at", _TIME, nullable=False),
        sa.Column("event", sa.String(40), nullable=False),
        sa.Column("old_state", sa.String(20)),
        sa.Column("new_state", sa.String(20), nullable=False),
        sa.Column("detail", sa.Text),
    )
    op.create_index("ix_catalog_events_model_id", "catalog_events", ["model_id"])
    op.create_table(
        "daemons",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("version", sa.String(40), nullable=False),
        sa.Column("started_at", _TIME, nullable=False),
        sa.Column("heartbeat_at", _TIME, nullable=False),
        sa.Column("stopped_at", _TIME),
        sa.Column("activity", sa.Text, nullable=False, server_default="starting"),
    )


def downgrade() -> None:
    op.drop_table("daemons")
    op.drop_index("ix_catalog_events_model_id", table_name="catalog_events")
    op.drop_table("catalog_events")
    op.drop_table("base_models")
