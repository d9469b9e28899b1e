"""All tables. Timestamps are integer epoch milliseconds (portable across SQLite and PostgreSQL,
cheap to compare); JSON documents are stored as text written by orjson. Credit amounts are integer
micro-credits (1 credit = 1,000,000 µcr), except ``model_overrides.pricing``, which holds catalog
prices and so is in credits like the catalog file."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

accounts = Table(
    "accounts",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("email", String(320), nullable=False, unique=True),
    Column("password_hash", String(200), nullable=True),
    Column("display_name", String(200), nullable=True),
    Column("is_admin", Boolean, nullable=False, default=False),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("balance", BigInteger, nullable=False, default=0),
    Column("held", BigInteger, nullable=False, default=0),
    Column("webhook_secret", String(100), nullable=True),
    Column("webhook_secret_prev", String(100), nullable=True),
    Column("webhook_secret_prev_until", BigInteger, nullable=True),
    Column("rate_limit_rpm", Integer, nullable=True),
    Column("max_concurrent_tasks", Integer, nullable=True),
    Column("locale", String(10), nullable=True),
    Column("created_at", BigInteger, nullable=False),
    # the database itself refuses a negative balance or hold, and a hold above the balance
    CheckConstraint("balance >= 0", name="balance_nonnegative"),
    CheckConstraint("held >= 0", name="held_nonnegative"),
    CheckConstraint("held <= balance", name="held_within_balance"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("account_id", String(40), ForeignKey("accounts.id"), nullable=False, index=True),
    Column("name", String(200), nullable=False, default=""),
    Column("prefix", String(20), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("allowed_models", Text, nullable=True),  # JSON list of canonical model ids
    Column("credit_budget", BigInteger, nullable=True),
    Column("credits_spent", BigInteger, nullable=False, default=0),
    Column("rate_limit_rpm", Integer, nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("last_used_at", BigInteger, nullable=True),
    Column("revoked_at", BigInteger, nullable=True),
)

tasks = Table(
    "tasks",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("account_id", String(40), ForeignKey("accounts.id"), nullable=False),
    Column("api_key_id", String(40), nullable=True),
    Column("type", String(20), nullable=False),
    Column("model", String(100), nullable=False),
    Column("status", String(20), nullable=False),
    Column("input", Text, nullable=False),
    Column("output", Text, nullable=True),
    Column("error", Text, nullable=True),
    Column("price", BigInteger, nullable=False),
    Column("charged", BigInteger, nullable=False, default=0),
    Column("callback_url", Text, nullable=True),
    Column("node", String(100), nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("lease_token", String(40), nullable=True),
    Column("lease_expires_at", BigInteger, nullable=True),
    Column("run_after", BigInteger, nullable=False, default=0),
    Column("created_at", BigInteger, nullable=False),
    Column("started_at", BigInteger, nullable=True),
    Column("finished_at", BigInteger, nullable=True),
    Column("route", String(100), nullable=True),  # the upstream route that served (or is serving) it
    Column("progress", Integer, nullable=True),  # 0-100 while the upstream reports one
    Column("remote_job", Text, nullable=True),  # JSON handle of a job running upstream (video, audio)
    Column("poll_at", BigInteger, nullable=True),  # when the remote-job poller looks at it next
    Index("ix_tasks_account_created", "account_id", "id"),
    Index("ix_tasks_queue", "status", "created_at", "id"),  # a lease reads queued tasks oldest first
    Index("ix_tasks_lease", "status", "lease_expires_at"),
    Index("ix_tasks_account_status", "account_id", "status"),
    Index("ix_tasks_poll", "status", "poll_at"),
)

ledger_entries = Table(
    "ledger_entries",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("account_id", String(40), ForeignKey("accounts.id"), nullable=False),
    Column("kind", String(20), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("task_id", String(40), nullable=True),
    Column("note", Text, nullable=True),
    Column("actor", String(40), nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("request_id", String(40), nullable=True),
    Index("ix_ledger_account_id", "account_id", "id"),
)

request_log = Table(
    "request_log",
    metadata,
    Column("id", String(40), primary_key=True),  # req_<ulid>: time-ordered, the paging cursor
    Column("account_id", String(40), ForeignKey("accounts.id"), nullable=False),
    Column("api_key_id", String(40), nullable=True),
    Column("key_prefix", String(20), nullable=True),
    Column("type", String(20), nullable=False),
    Column("model", String(100), nullable=False),
    Column("route", String(100), nullable=True),
    Column("status", String(20), nullable=False),  # succeeded | failed | canceled
    Column("http_status", Integer, nullable=False),
    Column("credits", BigInteger, nullable=False),  # µcr charged
    Column("input_tokens", BigInteger, nullable=True),
    Column("output_tokens", BigInteger, nullable=True),
    Column("latency_ms", BigInteger, nullable=True),
    Column("ttft_ms", BigInteger, nullable=True),
    Column("task_id", String(40), nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Index("ix_request_log_account_id", "account_id", "id"),
    Index("ix_request_log_account_created", "account_id", "created_at"),
    Index("ix_request_log_account_model", "account_id", "model", "id"),
    Index("ix_request_log_created", "created_at"),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("account_id", String(40), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("route", String(100), nullable=False),
    Column("request_hash", String(64), nullable=False),
    Column("status_code", Integer, nullable=True),
    Column("response_body", Text, nullable=True),
    Column("task_id", String(40), nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Index("ix_idempotency_created", "created_at"),
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", String(40), primary_key=True),  # the stable webhook-id
    Column("task_id", String(40), nullable=False, index=True),
    Column("account_id", String(40), nullable=False),
    Column("url", Text, nullable=False),
    Column("payload", Text, nullable=False),
    Column("status", String(20), nullable=False),  # pending | delivered | failed | stopped
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", BigInteger, nullable=True),
    Column("lease_expires_at", BigInteger, nullable=True),
    Column("last_status_code", Integer, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("delivered_at", BigInteger, nullable=True),
    Index("ix_webhook_due", "status", "next_attempt_at"),
)

webhook_attempts = Table(
    "webhook_attempts",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("delivery_id", String(40), ForeignKey("webhook_deliveries.id"), nullable=False, index=True),
    Column("attempted_at", BigInteger, nullable=False),
    Column("status_code", Integer, nullable=True),
    Column("duration_ms", Integer, nullable=False),
    Column("error", Text, nullable=True),
    Column("next_attempt_at", BigInteger, nullable=True),
)

web_sessions = Table(
    "web_sessions",
    metadata,
    Column("id_hash", String(64), primary_key=True),
    Column("account_id", String(40), ForeignKey("accounts.id"), nullable=False, index=True),
    Column("csrf_token", String(64), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
)

redemption_codes = Table(
    "redemption_codes",
    metadata,
    Column("code_hash", String(64), primary_key=True),
    Column("batch", String(100), nullable=False),
    Column("code_prefix", String(20), nullable=False),
    Column("credits", BigInteger, nullable=False),
    Column("created_by", String(40), nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("redeemed_by", String(40), nullable=True),
    Column("redeemed_at", BigInteger, nullable=True),
)

orders = Table(
    "orders",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("account_id", String(40), ForeignKey("accounts.id"), nullable=False, index=True),
    Column("pack", String(100), nullable=False),
    Column("credits", BigInteger, nullable=False),
    Column("amount_cents", BigInteger, nullable=False),
    Column("currency", String(10), nullable=False, default="USD"),
    Column("provider", String(40), nullable=False, default="manual"),
    Column("external_id", String(200), nullable=True),
    Column("status", String(20), nullable=False),  # pending | paid | canceled
    Column("history", Text, nullable=False, default="[]"),
    Column("created_at", BigInteger, nullable=False),
    Column("paid_at", BigInteger, nullable=True),
)

worker_nodes = Table(
    "worker_nodes",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("models", Text, nullable=False, default="[]"),
    Column("concurrency", Integer, nullable=False, default=1),
    Column("pid", Integer, nullable=True),
    Column("hostname", String(200), nullable=True),
    Column("started_at", BigInteger, nullable=False),
    Column("heartbeat_at", BigInteger, nullable=False),
    Column("stopped_at", BigInteger, nullable=True),
    Column("running", Integer, nullable=False, default=0),
    Column("model_limits", Text, nullable=True),  # JSON {"model id": max running on this node}
    Column("heartbeat_interval_ms", Integer, nullable=True),
)

model_overrides = Table(
    "model_overrides",
    metadata,
    Column("model_id", String(100), primary_key=True),
    Column("enabled", Boolean, nullable=True),
    Column("pricing", Text, nullable=True),  # JSON {"medium": 10, "high": 28}
    Column("updated_at", BigInteger, nullable=False),
)

route_health = Table(
    "route_health",
    metadata,
    Column("model", String(100), primary_key=True),
    Column("route", String(100), primary_key=True),
    Column("state", String(20), nullable=False),  # closed | open | half_open
    Column("consecutive_failures", Integer, nullable=False, default=0),
    Column("open_until", BigInteger, nullable=True),
    Column("probe_until", BigInteger, nullable=True),  # a half-open probe is out until then
    Column("requests", BigInteger, nullable=False, default=0),
    Column("failures", BigInteger, nullable=False, default=0),
    Column("latency_ms_p50", Integer, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("last_error_at", BigInteger, nullable=True),
    Column("updated_at", BigInteger, nullable=False),
)

usage_daily = Table(
    "usage_daily",
    metadata,
    # request_log summed per UTC day, model and key, in the transaction that writes each record: a
    # year of a busy account's usage reads a few thousand rows instead of millions
    Column("account_id", String(40), primary_key=True),
    Column("day", Integer, primary_key=True),  # UTC days since 1970-01-01
    Column("model", String(100), primary_key=True),
    Column("key_prefix", String(20), primary_key=True),  # "" for requests made without a key
    Column("requests", BigInteger, nullable=False),
    Column("succeeded", BigInteger, nullable=False),
    Column("failed", BigInteger, nullable=False),
    Column("credits", BigInteger, nullable=False),  # µcr charged
    Column("input_tokens", BigInteger, nullable=False),
    Column("output_tokens", BigInteger, nullable=False),
)

upstream_routes = Table(
    "upstream_routes",
    metadata,
    Column("id", String(40), primary_key=True),  # rte_<ulid>
    Column("model_id", String(100), nullable=False),
    Column("name", String(100), nullable=False),  # a catalog route of this name is replaced by this row
    Column("provider", String(40), nullable=False),
    Column("base_url", String(500), nullable=True),
    Column("upstream_model", String(200), nullable=True),
    Column("keys_encrypted", Text, nullable=True),  # Fernet token of the comma-separated keys
    Column("key_hint", String(8), nullable=True),  # last 4 characters of each key, for the console
    Column("priority", Integer, nullable=False, default=0),
    Column("weight", Integer, nullable=False, default=1),
    Column("timeout_s", Integer, nullable=True),
    Column("enabled", Boolean, nullable=False, default=True),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    UniqueConstraint("model_id", "name", name="uq_upstream_routes_model_name"),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", String(40), primary_key=True),  # aud_<ulid>: time-ordered, the paging cursor
    Column("actor_id", String(40), nullable=True),  # the admin; null for the command line
    Column("action", String(60), nullable=False),  # route.create, model.update, credits.grant, ...
    Column("target", String(200), nullable=False),
    Column("detail", Text, nullable=True),  # JSON; never a key
    Column("created_at", BigInteger, nullable=False),
)

__all__ = [
    "UniqueConstraint",
    "accounts",
    "api_keys",
    "audit_log",
    "idempotency_keys",
    "ledger_entries",
    "metadata",
    "model_overrides",
    "orders",
    "redemption_codes",
    "request_log",
    "route_health",
    "tasks",
    "upstream_routes",
    "usage_daily",
    "web_sessions",
    "webhook_attempts",
    "webhook_deliveries",
    "worker_nodes",
]
