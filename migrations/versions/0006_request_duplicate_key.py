"""A request's duplicate key: what tells a repeated request from a new one at every door.

training_requests gets `duplicate_key`: the sha256 of the request as read (its fields, so
spelling, key order and whitespace do not count) and of its dataset's bytes. A request
without a request_id is a duplicate only of one with the same key whose run is queued,
running or succeeded (docs/interface.md, "Duplicates"). Older rows have none: they are never
taken for the first of a duplicate.

Revision ID: 0006_request_duplicate_key
Revises: 0005_request_time_micro
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_request_duplicate_key"
down_revision = "0005_request_time_micro"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("training_requests", sa.Column("duplicate_key", sa.String(64)))
    op.create_index("ix_training_requests_duplicate_key", "training_requests", ["duplicate_key"])


def downgrade() -> None:
    op.drop_index("ix_training_requests_duplicate_key", table_name="training_requests")
    op.drop_column("training_requests", "duplicate_key")  # plain DROP COLUMN, even on SQLite
