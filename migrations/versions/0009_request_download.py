"""A request that names a Hub repository waits for its download: `training_requests.download_id`.

A request naming `hf:ORG/NAME[@REV]` in base_models whose model is not on the box stays
`pending` while a `model_downloads` row fetches it; `download_id` names that row. The daemon
decides the request again when the download ends: queued once the model is `ready`, rejected
with the download's reason if it failed (oneseekd/intake/hubnames.py). NULL for every other
request; after the verdict it keeps naming the download the request waited for.

Revision ID: 0009_request_download
Revises: 0008_model_downloads
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_request_download"
down_revision = "0008_model_downloads"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("training_requests", sa.Column("download_id", sa.Integer))


def downgrade() -> None:
    op.drop_column("training_requests", "download_id")  # plain DROP COLUMN, even on SQLite
