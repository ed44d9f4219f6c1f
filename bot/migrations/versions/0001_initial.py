"""Initial schema: deliveries, incidents, side_effects, counters, model_usage.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def utc_datetime() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "deliveries",
        sa.Column("delivery_id", sa.String(100), primary_key=True),
        sa.Column("event", sa.String(100), nullable=False),
        sa.Column("action", sa.String(100), nullable=True),
        sa.Column("installation_id", sa.BigInteger, nullable=True),
        sa.Column("repository", sa.String(255), nullable=True),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("received_at", utc_datetime(), nullable=False),
        sa.Column("updated_at", utc_datetime(), nullable=False),
    )
    op.create_index("ix_deliveries_status_updated_at", "deliveries", ["status", "updated_at"])

    op.create_table(
        "incidents",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("repository", sa.String(255), nullable=False),
        sa.Column("fingerprint", sa.String(128), nullable=False),
        sa.Column("category", sa.String(64), nullable=False),
        sa.Column("severity", sa.String(32), nullable=False),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("first_seen", utc_datetime(), nullable=False),
        sa.Column("last_seen", utc_datetime(), nullable=False),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("issue_number", sa.Integer, nullable=True),
        sa.Column("comment_id", sa.BigInteger, nullable=True),
        sa.Column("muted_until", utc_datetime(), nullable=True),
        sa.Column("last_excerpt_hash", sa.String(128), nullable=True),
        sa.UniqueConstraint("repository", "fingerprint", name="uq_incidents_repository_fingerprint"),
    )

    op.create_table(
        "side_effects",
        sa.Column("key", sa.String(512), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("repository", sa.String(255), nullable=False),
        sa.Column("target", sa.String(255), nullable=True),
        sa.Column("delivery_id", sa.String(100), nullable=True),
        sa.Column("created_at", utc_datetime(), nullable=False),
        sa.Column("completed_at", utc_datetime(), nullable=True),
        sa.Column("detail", sa.JSON, nullable=True),
    )

    op.create_table(
        "counters",
        sa.Column("scope", sa.String(64), primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("window_start", utc_datetime(), primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False),
    )

    op.create_table(
        "model_usage",
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("repository", sa.String(255), primary_key=True),
        sa.Column("installation_id", sa.BigInteger, primary_key=True),
        sa.Column("calls", sa.BigInteger, nullable=False),
        sa.Column("input_tokens", sa.BigInteger, nullable=False),
        sa.Column("output_tokens", sa.BigInteger, nullable=False),
        sa.Column("cache_read_tokens", sa.BigInteger, nullable=False),
        sa.Column("cache_write_tokens", sa.BigInteger, nullable=False),
        sa.Column("cost_micro_usd", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    for table in ("model_usage", "counters", "side_effects", "incidents", "deliveries"):
        op.drop_table(table)
