"""upstream routes: shared circuit-breaker state per route; tasks remember their route and remote job

Revision ID: 0002_upstream_routes
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_upstream_routes"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "route_health",
        sa.Column("model", sa.String(length=100), nullable=False),
        sa.Column("route", sa.String(length=100), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False),
        sa.Column("open_until", sa.BigInteger(), nullable=True),
        sa.Column("probe_until", sa.BigInteger(), nullable=True),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("failures", sa.BigInteger(), nullable=False),
        sa.Column("latency_ms_p50", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_error_at", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("model", "route", name=op.f("pk_route_health")),
    )
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("route", sa.String(length=100), nullable=True))
        batch.add_column(sa.Column("progress", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("remote_job", sa.Text(), nullable=True))
        batch.add_column(sa.Column("poll_at", sa.BigInteger(), nullable=True))
    op.create_index("ix_tasks_poll", "tasks", ["status", "poll_at"])


def downgrade() -> None:
    op.drop_index("ix_tasks_poll", table_name="tasks")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("poll_at")
        batch.drop_column("remote_job")
        batch.drop_column("progress")
        batch.drop_column("route")
    op.drop_table("route_health")
