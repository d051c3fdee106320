"""A daemon's row says where it runs: its home and its machine.

Two daemons given the same host name (a copied oneseekd.toml, a cloned VM) would each take
the other's running run for its own, left behind, and stop its trainer. With `home` (the
home's real path) and `machine` (/etc/machine-id, else the kernel's host name) a daemon
tells a predecessor of its own home, dead since it holds the home's lock, from a live
namesake elsewhere, and refuses to start beside the latter (docs/scale-out.md).

Revision ID: 0007_daemon_identity
Revises: 0006_request_duplicate_key
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_daemon_identity"
down_revision = "0006_request_duplicate_key"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("daemons", sa.Column("home", sa.Text()))
    op.add_column("daemons", sa.Column("machine", sa.String(255)))


def downgrade() -> None:
    op.drop_column("daemons", "machine")
    op.drop_column("daemons", "home")
