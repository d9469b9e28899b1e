"""The error shape clients branch on: ``param`` always present, ``WWW-Authenticate`` on 401s."""

from __future__ import annotations

import pytest

from tests.conftest import AppHarness


@pytest.mark.parametrize(("method", "path", "status", "code"), [
    ("GET", "/api/v1/tasks/tsk_01JD7Q0000000000000000000X", 404, "task_not_found"),
    ("GET", "/api/v1/models/nope", 404, "model_not_found"),
    ("GET", "/api/v1/no-such-route", 404, "not_found"),
    ("DELETE", "/api/v1/tasks", 405, "method_not_allowed"),
    ("POST", "/api/v1/images/generations", 400, "invalid_json"),
])
async def test_param_is_always_present(sqlite_harness: AppHarness, method: str, path: str, status: int,
                                       code: str) -> None:
    caller = await sqlite_harness.caller()
    r = await sqlite_harness.client.request(method, path, headers={**caller.headers, "Content-Type": "application/json"},
                                            content=b"{nope")
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and "param" in error and error["param"] is None, error


@pytest.mark.parametrize("authorization", [None, "Basic abc", "Bearer nope", "Bearer aio_unknownkeyvalue"])
@pytest.mark.parametrize("path", ["/api/v1/account", "/api/v1/tasks", "/v1/models"])
async def test_401_carries_www_authenticate_bearer(sqlite_harness: AppHarness, path: str,
                                                   authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    r = await sqlite_harness.client.get(path, headers=headers)
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert "param" in r.json()["error"]
