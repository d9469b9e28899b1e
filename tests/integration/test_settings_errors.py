"""``apiinone serve`` with unusable settings: it names the setting and the rule, never the value
(pydantic's own messages quote the input, and settings hold secrets)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

FAKE_SECRET = "sk-live-FAKE0123456789abcdefSECRET"


def _serve(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("APIINONE_", "OPENAI_"))}
    clean.update({"APIINONE_DATA_DIR": str(tmp_path / "data"), "OPENAI_API_KEY": FAKE_SECRET, **env})
    return subprocess.run([sys.executable, "-m", "apiinone.cli", "serve", "--port", "1"], env=clean,
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize(("env", "named"), [
    ({"APIINONE_ENV": "production", "APIINONE_SECRET_KEY": "changeme"}, "APIINONE_SECRET_KEY"),
    ({"APIINONE_WORKER_CONCURRENCY": FAKE_SECRET}, "APIINONE_WORKER_CONCURRENCY"),
    ({"APIINONE_ENV": FAKE_SECRET}, "APIINONE_ENV"),
    ({"APIINONE_MODEL_CONCURRENCY": '{"m": "' + FAKE_SECRET + '"}'}, "APIINONE_MODEL_CONCURRENCY"),
    ({"APIINONE_MODEL_CONCURRENCY": "{" + FAKE_SECRET}, "APIINONE_MODEL_CONCURRENCY"),
    ({"APIINONE_SIGNUP": FAKE_SECRET}, "APIINONE_SIGNUP"),
])
def test_bad_setting_is_named_and_its_value_never_printed(tmp_path: Path, env: dict[str, str], named: str) -> None:
    done = _serve(tmp_path, **env)
    assert done.returncode == 2, (done.stdout, done.stderr)
    output = done.stdout + done.stderr
    assert named in output and "configuration error" in output
    assert FAKE_SECRET not in output and "sk-live" not in output
    assert "Traceback" not in output


def test_factory_settings_error_carries_no_value(monkeypatch: pytest.MonkeyPatch) -> None:
    """The multi-process factory raises (uvicorn prints it): the exception chain holds no value."""
    from apiinone.config import SettingsError
    from apiinone.web.factory import app_from_env

    monkeypatch.setenv("APIINONE_ENV", "production")
    monkeypatch.setenv("APIINONE_SECRET_KEY", "changeme")
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_SECRET)
    with pytest.raises(SettingsError) as caught:
        app_from_env()
    assert FAKE_SECRET not in str(caught.value) and caught.value.__cause__ is None
    assert caught.value.__suppress_context__
