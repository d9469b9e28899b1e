"""Typed settings: one object, read once from the environment and passed everywhere."""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as PydanticSettingsError

from apiinone.domain.webhooks import DEFAULT_RETRY_SCHEDULE_S

PLACEHOLDER_SECRETS = {"", "changeme", "change-me", "secret", "changethis", "dev", "development"}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="APIINONE_", extra="ignore", populate_by_name=True)

    env: Literal["development", "production", "test"] = "development"
    data_dir: Path = Path("./data")
    database_url: str | None = None
    redis_url: str | None = None
    storage_url: str | None = None
    public_url: str | None = None
    secret_key: str | None = None
    models_file: Path | None = None
    egress_allow: str | None = None

    # Webhook delivery. The schedule is seconds to wait after each failed attempt (a JSON list,
    # e.g. APIINONE_WEBHOOK_RETRY_SCHEDULE_S='[1, 2]'); the lease must outlast the timeout.
    webhook_retry_schedule_s: list[float] = Field(default_factory=lambda: list(DEFAULT_RETRY_SCHEDULE_S))
    webhook_timeout_s: float = 10.0
    webhook_lease_s: float = 60.0
    webhook_concurrency: int = 64
    webhook_account_concurrency: int = 8
    webhook_poll_s: float = 1.0

    openai_api_key: str | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_API_KEY", "APIINONE_OPENAI_API_KEY")
    )
    openai_base_url: str = Field(
        default="https://api.openai.com/v1",
        validation_alias=AliasChoices("OPENAI_BASE_URL", "APIINONE_OPENAI_BASE_URL"),
    )
    openai_timeout_s: float = 120.0
    openai_max_retries: int = 3
    openai_backoff_s: float = 1.0

    # Upstream routes (API.md "Upstream routes and failover")
    route_attempts: int = Field(default=3, ge=1, le=20)
    route_backoff_s: float = Field(default=0.5, ge=0)
    breaker_failures: int = Field(default=5, ge=1)
    breaker_cooldown_s: float = Field(default=30.0, ge=0)
    breaker_sync_s: float = Field(default=1.0, gt=0)

    task_lease_s: float = 30.0
    task_max_attempts: int = 3
    worker_concurrency: int = 8
    worker_poll_s: float = 1.0
    node_name: str | None = None
    # Remote jobs (video, audio): how one worker follows jobs that run upstream.
    remote_job_concurrency: int = Field(default=256, ge=1)
    remote_job_lease_s: float = Field(default=120.0, gt=0)
    remote_job_poll_s: float = Field(default=1.0, gt=0)
    remote_job_min_interval_s: float = Field(default=1.0, ge=0)
    remote_job_max_interval_s: float = Field(default=30.0, gt=0)
    remote_job_timeout_s: float = Field(default=6 * 3600.0, gt=0)
    remote_result_max_bytes: int = Field(default=512 * 1024 * 1024, ge=1)
    # Cluster-wide cap on running tasks per model (JSON object of model id -> count), for upstreams
    # whose rate limit all nodes share, e.g. APIINONE_MODEL_CONCURRENCY='{"gpt-image-1.5-official": 16}'.
    model_concurrency: dict[str, int] = Field(default_factory=dict)

    # Rate limits: off unless set here (defaults) or on the account / key rows.
    rate_limit_key_rpm: int | None = None
    rate_limit_account_rpm: int | None = None
    max_concurrent_tasks: int | None = None

    # S3-compatible storage (APIINONE_STORAGE_URL=s3://bucket/prefix). Unset credentials fall back
    # to boto3's own chain (AWS_* variables, instance profile).
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    s3_addressing_style: Literal["auto", "path", "virtual"] = "auto"
    s3_presign_s: int = 0  # > 0: /files/{key} redirects to a presigned URL valid this long
    s3_public_url: str | None = None  # a public bucket or CDN base: image URLs point there directly
    storage_retention_days: int | None = None
    # Flush each stored image to disk before renaming it into place. Off: a power loss can lose
    # images of recently finished tasks; on: one disk flush per image (README, Performance).
    storage_fsync: bool = True

    key_cache_ttl_s: float = 2.0
    starter_credits: int = 0
    # Console: credit packs sold by order ("500,2000,10000" credits at 1 credit = USD 0.01), login
    # throttle (failed logins per email in 15 minutes; 3x that per client address), session lifetime.
    credit_packs: str = "500,2000,10000"
    signup: Literal["open", "closed"] = "open"  # closed: accounts come from admins and the CLI
    login_max_failures: int = 10
    session_ttl_days: int = 30
    # Request log retention: `apiinone admin purge-requests` deletes older records (unset: keep all).
    request_log_retention_days: int | None = Field(default=None, ge=1)
    # OpenTelemetry traces, off unless an OTLP endpoint is set (needs the `otel` extra installed).
    otel_exporter_otlp_endpoint: str | None = Field(
        default=None,
        validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_ENDPOINT", "APIINONE_OTEL_EXPORTER_OTLP_ENDPOINT"))
    otel_service_name: str = Field(default="apiinone",
                                   validation_alias=AliasChoices("OTEL_SERVICE_NAME", "APIINONE_OTEL_SERVICE_NAME"))
    log_level: str = "INFO"
    log_json: bool = True
    db_pool_size: int = 10
    sqlite_busy_timeout_ms: int = 10_000

    @model_validator(mode="after")
    def _refuse_placeholder_secret_in_production(self) -> Settings:
        if self.env == "production" and (self.secret_key or "").strip().lower() in PLACEHOLDER_SECRETS:
            raise ValueError("APIINONE_SECRET_KEY must be set to a real secret in production")
        return self

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.data_dir.resolve() / 'apiinone.db'}"

    @property
    def resolved_storage_url(self) -> str:
        return self.storage_url or f"file://{self.data_dir.resolve() / 'files'}"

    @property
    def is_sqlite(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")

    def base_url(self, fallback: str = "http://127.0.0.1:8000") -> str:
        return (self.public_url or fallback).rstrip("/")

    def resolved_secret_key(self) -> str:
        """The configured secret, or one generated once into the data dir (development only)."""
        if self.secret_key:
            return self.secret_key
        path = self.data_dir / "secret_key"
        if path.exists():
            return path.read_text().strip()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        value = secrets.token_urlsafe(48)
        path.write_text(value)
        path.chmod(0o600)
        return value


class SettingsError(ValueError):
    """Settings that cannot be used. The message names each setting and the rule it breaks, never
    its value: values can be secrets (pydantic's own messages quote the input)."""


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment (and ``overrides``), or :class:`SettingsError` with a message
    that is safe to print and log."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = [f"{_setting_name(error['loc'])}: {_rule_of(error)}" for error in exc.errors(include_url=False,
                                                                                              include_input=False)]
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None
    except PydanticSettingsError as exc:  # a JSON setting that does not parse; its message names the field
        match = re.search(r'field "(\w+)"', str(exc))
        name = _setting_name((match.group(1),)) if match else "a JSON setting"
        raise SettingsError(f"invalid settings: {name}: is not valid JSON") from None


def _setting_name(loc: tuple[int | str, ...]) -> str:
    if not loc:
        return "settings"
    name = str(loc[0])
    field = Settings.model_fields.get(name)
    alias = field.validation_alias if field is not None else None
    if isinstance(alias, AliasChoices):
        env = str(alias.choices[0])
    elif isinstance(alias, str):
        env = alias
    else:
        env = f"APIINONE_{name.upper()}"
    return env + "".join(f"[{part!r}]" if isinstance(part, str) else f"[{part}]" for part in loc[1:])


def _rule_of(error: Any) -> str:
    """pydantic's message without anything taken from the input (our validators' messages are ours)."""
    message = str(error.get("msg", "is not valid")).removeprefix("Value error, ")
    return message if error.get("type") not in ("json_invalid",) else "is not valid JSON"
