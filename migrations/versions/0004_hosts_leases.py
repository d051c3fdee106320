"""Several hosts on one database: catalog rows name their host, runs their claim and its lease.

base_models gets `host` (existing rows: this machine's host name, or ONESEEK_HOST) and its key
becomes unique per host. runs get `host` and `lease_expires_at` (who claimed the run, and until
when the claim holds), and `fingerprints_host` (whose catalog rows the fingerprints are); the
one-running-run index becomes one running run per host.

Revision ID: 0004_hosts_leases
Revises: 0003_training_ledger
Create Date: 2026-12-01
"""

from __future__ import annotations

import os
import socket

import sqlalchemy as sa
from alembic import op

revision = "0004_hosts_leases"
down_revision = "0003_training_ledger"
branch_labels = None
depends_on = None

_TIME = sa.String(32)  # ISO-8601 UTC text, see oneseekd.db.models.UTCDateTime


def _host() -> str:
    """The host the rows written so far belong to: the daemon that ran on this database."""
    return (os.environ.get("ONESEEK_HOST") or "").strip() or socket.gethostname()


def _base_models(*, upgraded: bool) -> sa.Table:
    """base_models as SQLite rebuilds it: 0001's table with `host` added, its key unique
    (before) or unique per host (after). The names let batch mode drop the constraints."""
    unique = (
        sa.UniqueConstraint("host", "key", name="uq_base_models_host_key")
        if upgraded
        else sa.UniqueConstraint("key", name="uq_base_models_key")
    )
    return sa.Table(
        "base_models",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("key", sa.String(200), nullable=False),
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
        sa.Column("host", sa.String(255), nullable=not upgraded),
        sa.CheckConstraint(
            "state IN ('ready', 'incomplete', 'invalid', 'missing')", name="ck_base_models_state"
        ),
        unique,
    )


def _one_running(columns: list[str]) -> None:
    op.create_index(
        "uq_runs_one_running",
        "runs",
        columns,
        unique=True,
        sqlite_where=sa.text("state = 'running'"),
        postgresql_where=sa.text("state = 'running'"),
    )


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    host = _host()
    op.add_column("base_models", sa.Column("host", sa.String(255)))
    op.execute(sa.text("UPDATE base_models SET host = :host").bindparams(host=host))
    if sqlite:
        # SQLite cannot drop the column's UNIQUE: the table is rebuilt (migrate.py turns
        # foreign keys off meanwhile, so catalog_events keeps its rows)
        with op.batch_alter_table(
            "base_models", recreate="always", copy_from=_base_models(upgraded=False)
        ) as batch:
            batch.alter_column("host", existing_type=sa.String(255), nullable=False)
            batch.drop_constraint("uq_base_models_key", type_="unique")
            batch.create_unique_constraint("uq_base_models_host_key", ["host", "key"])
    else:
        op.alter_column("base_models", "host", existing_type=sa.String(255), nullable=False)
        op.drop_constraint("base_models_key_key", "base_models", type_="unique")
        op.create_unique_constraint("uq_base_models_host_key", "base_models", ["host", "key"])

    op.add_column("runs", sa.Column("host", sa.String(255)))
    op.add_column("runs", sa.Column("lease_expires_at", _TIME))
    op.add_column("runs", sa.Column("fingerprints_host", sa.String(255)))
    op.execute(sa.text("UPDATE runs SET fingerprints_host = :host").bindparams(host=host))
    op.execute(
        sa.text("UPDATE runs SET host = :host WHERE state <> 'queued'").bindparams(host=host)
    )
    op.drop_index("uq_runs_one_running", table_name="runs")
    _one_running(["host"])


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    op.drop_index("uq_runs_one_running", table_name="runs")
    _one_running(["state"])
    for column in ("fingerprints_host", "lease_expires_at", "host"):
        op.drop_column("runs", column)  # plain ALTER TABLE ... DROP COLUMN, even on SQLite
    if sqlite:
        with op.batch_alter_table(
            "base_models", recreate="always", copy_from=_base_models(upgraded=True)
        ) as batch:
            batch.drop_constraint("uq_base_models_host_key", type_="unique")
            batch.drop_column("host")
            batch.create_unique_constraint("uq_base_models_key", ["key"])
    else:
        op.drop_constraint("uq_base_models_host_key", "base_models", type_="unique")
        op.drop_column("base_models", "host")
        op.create_unique_constraint("base_models_key_key", "base_models", ["key"])
