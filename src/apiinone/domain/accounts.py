"""Accounts and API keys as the domain sees them (hashes stay in the persistence layer)."""

from __future__ import annotations

from dataclasses import dataclass, field

from apiinone.domain.credits import Credits


@dataclass(slots=True)
class Account:
    id: str
    email: str
    created_at: int
    credits: Credits = field(default_factory=lambda: Credits(0, 0))
    password_hash: str | None = None
    display_name: str | None = None
    is_admin: bool = False
    disabled: bool = False
    webhook_secret: str | None = None
    webhook_secret_prev: str | None = None
    webhook_secret_prev_until: int | None = None
    rate_limit_rpm: int | None = None
    max_concurrent_tasks: int | None = None
    locale: str | None = None


@dataclass(slots=True)
class ApiKey:
    id: str
    account_id: str
    name: str
    prefix: str
    created_at: int
    allowed_models: tuple[str, ...] | None = None
    credit_budget: int | None = None
    credits_spent: int = 0
    rate_limit_rpm: int | None = None
    last_used_at: int | None = None
    revoked_at: int | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def may_use(self, model_id: str) -> bool:
        return self.allowed_models is None or model_id in self.allowed_models
