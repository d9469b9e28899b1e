"""console routes, audit log, daily usage sums, request-log time index

``usage_daily`` sums ``request_log`` per account, UTC day, model and key (written with each record
from now on; filled here from the records so far), so usage over a year reads a few thousand rows.
``upstream_routes`` holds the routes an admin makes in the console (keys encrypted with the
instance's secret key); they merge with the catalog file's routes. ``audit_log`` records every
admin change. ``request_log`` gains an index on ``created_at`` (the retention purge and the
admin's per-route usage).

Revision ID: 0004_routes_audit_usage
Revises: 0003_micro_credits
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_routes_audit_usage"
down_revision = "0003_micro_credits"
branch_labels = None
depends_on = None

SUMS = ("requests", "succeeded", "failed", "credits", "input_tokens", "output_tokens")
BACKFILL = """
INSERT INTO usage_daily (account_id, day, model, key_prefix, requests, succeeded, failed, credits,
                         input_tokens, output_tokens)
SELECT account_id, created_at / 86400000, model, COALESCE(key_prefix, ''), COUNT(*),
       SUM(CASE WHEN status = 'succeeded' THEN 1 ELSE 0 END), SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END),
       SUM(credits), COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0)
FROM request_log GROUP BY account_id, created_at / 86400000, model, COALESCE(key_prefix, '')
"""


def upgrade() -> None:
    op.create_table(
        "upstream_routes",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("model_id", sa.String(length=100), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("provider", sa.String(length=40), nullable=False),
        sa.Column("base_url", sa.String(length=500), nullable=True),
        sa.Column("upstream_model", sa.String(length=200), nullable=True),
        sa.Column("keys_encrypted", sa.Text(), nullable=True),
        sa.Column("key_hint", sa.String(length=8), nullable=True),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("weight", sa.Integer(), nullable=False),
        sa.Column("timeout_s", sa.Integer(), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_upstream_routes")),
        sa.UniqueConstraint("model_id", "name", name="uq_upstream_routes_model_name"),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("actor_id", sa.String(length=40), nullable=True),
        sa.Column("action", sa.String(length=60), nullable=False),
        sa.Column("target", sa.String(length=200), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    op.create_table(
        "usage_daily",
        sa.Column("account_id", sa.String(length=40), nullable=False),
        sa.Column("day", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=100), nullable=False),
        sa.Column("key_prefix", sa.String(length=20), nullable=False),
        *(sa.Column(name, sa.BigInteger(), nullable=False) for name in SUMS),
        sa.PrimaryKeyConstraint("account_id", "day", "model", "key_prefix", name=op.f("pk_usage_daily")),
    )
    op.execute(BACKFILL)
    op.create_index("ix_request_log_created", "request_log", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_request_log_created", table_name="request_log")
    op.drop_table("usage_daily")
    op.drop_table("audit_log")
    op.drop_table("upstream_routes")
