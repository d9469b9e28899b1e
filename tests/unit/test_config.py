"""Settings: safe defaults under the data dir, and no placeholder secret in production."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from apiinone.config import Settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read the environment; start each test from none of ours."""
    for name in list(os.environ):
        if name.startswith(("APIINONE_", "OPENAI_")):
            monkeypatch.delenv(name)


@pytest.mark.parametrize("secret", [None, "", "changeme", "CHANGEME", " secret ", "dev", "change-me"])
def test_placeholder_secret_is_refused_in_production(secret: str | None) -> None:
    with pytest.raises(ValidationError, match="APIINONE_SECRET_KEY"):
        Settings(env="production", secret_key=secret)


def test_real_secret_is_accepted_in_production() -> None:
    settings = Settings(env="production", secret_key="k3y-" + "x" * 40)
    assert settings.resolved_secret_key() == "k3y-" + "x" * 40


def test_placeholder_secret_is_refused_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APIINONE_ENV", "production")
    monkeypatch.setenv("APIINONE_SECRET_KEY", "changethis")
    with pytest.raises(ValidationError):
        Settings()


def test_development_allows_no_secret_and_generates_one_into_the_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    first = settings.resolved_secret_key()
    assert len(first) >= 32 and (tmp_path / "data" / "secret_key").read_text() == first
    assert (tmp_path / "data" / "secret_key").stat().st_mode & 0o777 == 0o600
    assert Settings(data_dir=tmp_path / "data").resolved_secret_key() == first, "stable across restarts"


def test_defaults_live_under_the_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings()
    assert settings.data_dir == Path("data")
    assert settings.resolved_database_url == f"sqlite+aiosqlite:///{tmp_path / 'data' / 'apiinone.db'}"
    assert settings.resolved_storage_url == f"file://{tmp_path / 'data' / 'files'}"
    assert settings.is_sqlite and settings.redis_url is None and settings.models_file is None
    assert settings.openai_api_key is None and settings.openai_base_url == "https://api.openai.com/v1"
    assert settings.task_lease_s == 30.0


def test_environment_names_from_the_contract(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("APIINONE_DATA_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("APIINONE_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
    monkeypatch.setenv("APIINONE_PUBLIC_URL", "https://api.example.com/")
    monkeypatch.setenv("APIINONE_TASK_LEASE_S", "12")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    settings = Settings()
    assert settings.data_dir == tmp_path / "elsewhere"
    assert settings.resolved_database_url == "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
    assert not settings.is_sqlite
    assert settings.base_url() == "https://api.example.com"
    assert settings.task_lease_s == 12.0
    assert (settings.openai_api_key, settings.openai_base_url) == ("sk-from-env", "http://127.0.0.1:9/v1")
