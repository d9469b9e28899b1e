"""micro-credits: every credit amount ×1,000,000 (exactly), CHECKs on balances, the request log

Money columns move from whole credits to integer micro-credits (1 credit = 1,000,000 µcr):
accounts.balance and held, ledger_entries.amount, tasks.price and charged, api_keys.credit_budget
and credits_spent, redemption_codes.credits, orders.credits. ``orders.amount_cents`` is money in
cents, not credits, and ``model_overrides.pricing`` holds catalog prices, which stay in credits
like the catalog file: neither changes.

The database then refuses a negative balance or hold and a hold above the balance (an account
whose rows already break that makes the upgrade fail rather than be silently "fixed").
Ledger entries gain ``request_id`` (direct calls have no task), and ``request_log`` gets one row
per billed request.

Downgrade divides back; an amount that is not whole credits is rounded toward zero, since the
old schema cannot hold it.

Revision ID: 0003_micro_credits
Revises: 0002_upstream_routes
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_micro_credits"
down_revision = "0002_upstream_routes"
branch_labels = None
depends_on = None

UCR_PER_CREDIT = 1_000_000
MONEY_COLUMNS = {
    "accounts": ("balance", "held"),
    "ledger_entries": ("amount",),
    "tasks": ("price", "charged"),
    "api_keys": ("credit_budget", "credits_spent"),
    "redemption_codes": ("credits",),
    "orders": ("credits",),
}
ACCOUNT_CHECKS = {
    "balance_nonnegative": "balance >= 0",
    "held_nonnegative": "held >= 0",
    "held_within_balance": "held <= balance",
}


def _scale(multiply: bool) -> None:
    for table, columns in MONEY_COLUMNS.items():
        if multiply:
            values = ", ".join(f"{c} = {c} * {UCR_PER_CREDIT}" for c in columns)
        else:  # integer division truncates toward zero on PostgreSQL and on SQLite alike
            values = ", ".join(f"{c} = {c} / {UCR_PER_CREDIT}" for c in columns)
        op.execute(f"UPDATE {table} SET {values}")


def upgrade() -> None:
    _scale(multiply=True)
    with op.batch_alter_table("accounts") as batch:
        for name, condition in ACCOUNT_CHECKS.items():
            batch.create_check_constraint(op.f(f"ck_accounts_{name}"), condition)
    with op.batch_alter_table("ledger_entries") as batch:
        batch.add_column(sa.Column("request_id", sa.String(length=40), nullable=True))
    op.create_table(
        "request_log",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("account_id", sa.String(length=40), nullable=False),
        sa.Column("api_key_id", sa.String(length=40), nullable=True),
        sa.Column("key_prefix", sa.String(length=20), nullable=True),
        sa.Column("type", sa.String(length=20), nullable=False),
        sa.Column("model", sa.String(length=100), nullable=False),
        sa.Column("route", sa.String(length=100), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("http_status", sa.Integer(), nullable=False),
        sa.Column("credits", sa.BigInteger(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=True),
        sa.Column("output_tokens", sa.BigInteger(), nullable=True),
        sa.Column("latency_ms", sa.BigInteger(), nullable=True),
        sa.Column("ttft_ms", sa.BigInteger(), nullable=True),
        sa.Column("task_id", sa.String(length=40), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name=op.f("fk_request_log_account_id_accounts")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_request_log")),
    )
    op.create_index("ix_request_log_account_id", "request_log", ["account_id", "id"])
    op.create_index("ix_request_log_account_created", "request_log", ["account_id", "created_at"])
    op.create_index("ix_request_log_account_model", "request_log", ["account_id", "model", "id"])


def downgrade() -> None:
    op.drop_index("ix_request_log_account_model", table_name="request_log")
    op.drop_index("ix_request_log_account_created", table_name="request_log")
    op.drop_index("ix_request_log_account_id", table_name="request_log")
    op.drop_table("request_log")
    with op.batch_alter_table("ledger_entries") as batch:
        batch.drop_column("request_id")
    with op.batch_alter_table("accounts") as batch:
        for name in ACCOUNT_CHECKS:
            batch.drop_constraint(op.f(f"ck_accounts_{name}"), type_="check")
    _scale(multiply=False)
