"""The task API end to end through the real app, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from tests.conftest import AppHarness

SEED = {
    "model": "local-typeset",
    "prompt": 'A modern logo design for a coffee shop called "Bean & Brew" with clean typography',
    "quality": "medium",
    "aspect_ratio": "1:1",
}


async def test_create_poll_and_fetch_image(harness: AppHarness) -> None:
    caller = await harness.caller(credits=10)
    r = await caller.post("/api/v1/images/generations", json=SEED)
    assert r.status_code == 202, r.text
    task = r.json()
    assert r.headers["location"] == f"/api/v1/tasks/{task['task_id']}"
    assert task["status"] == "queued" and task["credits"] == {"price": 1, "charged": 0}
    assert task["urls"]["get"] == f"http://testserver/api/v1/tasks/{task['task_id']}"
    done = await caller.wait_for(task["task_id"])
    assert done["status"] == "succeeded", done
    assert done["credits"]["charged"] == 1 and done["node"]
    image = done["output"]["images"][0]
    assert (image["width"], image["height"], image["content_type"]) == (1024, 1024, "image/png")
    img = await harness.client.get(image["url"].removeprefix("http://testserver"))
    assert img.status_code == 200 and img.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert "immutable" in img.headers["cache-control"]
    account = (await caller.get("/api/v1/account")).json()
    assert account["credits"] == {"balance": 9, "held": 0, "available": 9}
    ledger = (await caller.get("/api/v1/account/ledger")).json()["data"]
    assert [e["kind"] for e in ledger] == ["capture", "hold", "grant"]
    assert [e["amount"] for e in ledger] == [-1, 1, 10]


@pytest.mark.parametrize(("aspect", "size"), [("2:3", (1024, 1536)), ("3:2", (1536, 1024))])
async def test_aspect_ratios_give_contract_sizes(sqlite_harness: AppHarness, aspect: str, size: tuple[int, int]) -> None:
    caller = await sqlite_harness.caller()
    r = await caller.post("/api/v1/images/generations", json={**SEED, "aspect_ratio": aspect, "quality": "high"})
    assert r.status_code == 202
    done = await caller.wait_for(r.json()["task_id"])
    image = done["output"]["images"][0]
    assert (image["width"], image["height"]) == size
    assert done["credits"] == {"price": 2, "charged": 2}


async def test_alias_resolves_to_canonical_id(sqlite_harness: AppHarness) -> None:
    caller = await sqlite_harness.caller()
    r = await caller.post("/api/v1/images/generations", json={**SEED, "model": "typeset"})
    assert r.status_code == 202 and r.json()["model"] == "local-typeset"


BAD_INPUTS = [
    ({**SEED, "aspect_ratio": "4:3"}, 400, "invalid_parameter", "aspect_ratio"),
    ({**SEED, "quality": "ultra"}, 400, "invalid_parameter", "quality"),
    ({**SEED, "prompt": "   "}, 400, "invalid_parameter", "prompt"),
    ({**SEED, "prompt": "x" * 5001}, 400, "invalid_parameter", "prompt"),
    ({**SEED, "prompt": 42}, 400, "invalid_parameter", "prompt"),
    ({k: v for k, v in SEED.items() if k != "prompt"}, 400, "invalid_parameter", "prompt"),
    ({k: v for k, v in SEED.items() if k != "model"}, 400, "invalid_parameter", "model"),
    ({**SEED, "colour": "red"}, 400, "invalid_parameter", "colour"),
    ({**SEED, "input_urls": []}, 400, "invalid_parameter", "input_urls"),
    ({**SEED, "input_urls": ["https://example.com/a.png"] * 17}, 400, "invalid_parameter", "input_urls"),
    ({**SEED, "input_urls": "https://example.com/a.png"}, 400, "invalid_parameter", "input_urls"),
    ({**SEED, "input_urls": ["ftp://example.com/a.png"]}, 400, "url_not_allowed", "input_urls"),
    ({**SEED, "input_urls": ["http://127.0.0.1/a.png"]}, 400, "url_not_allowed", "input_urls"),
    ({**SEED, "callback_url": "http://169.254.169.254/latest"}, 400, "url_not_allowed", "callback_url"),
    ({**SEED, "callback_url": "file:///etc/passwd"}, 400, "url_not_allowed", "callback_url"),
    ({**SEED, "model": "no-such-model"}, 404, "model_not_found", "model"),
    ({**SEED, "model": "gpt-image-1-5"}, 503, "model_unavailable", None),
]


@pytest.mark.parametrize(("body", "status", "code", "param"), BAD_INPUTS)
async def test_bad_input_gets_clear_error_and_changes_nothing(
    harness: AppHarness, body: dict[str, object], status: int, code: str, param: str | None
) -> None:
    caller = await harness.caller(credits=50)
    r = await caller.post("/api/v1/images/generations", json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and error["message"]
    assert error.get("param") == param
    assert (await caller.get("/api/v1/tasks")).json()["data"] == []
    assert (await caller.get("/api/v1/account")).json()["credits"] == {"balance": 50, "held": 0, "available": 50}


async def test_invalid_json_and_non_object(sqlite_harness: AppHarness) -> None:
    caller = await sqlite_harness.caller()
    r = await caller.post("/api/v1/images/generations", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = await caller.post("/api/v1/images/generations", content=b"[1,2]")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


async def test_body_over_one_megabyte_is_413(sqlite_harness: AppHarness) -> None:
    caller = await sqlite_harness.caller()
    r = await caller.post("/api/v1/images/generations", content=b'{"prompt": "' + b"a" * (1024 * 1024) + b'"}')
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


@pytest.mark.parametrize("auth", [None, "Bearer", "Bearer nope", "Basic abc", "Bearer aio_unknownkey"])
async def test_bad_keys_are_401(sqlite_harness: AppHarness, auth: str | None) -> None:
    headers = {"Authorization": auth} if auth else {}
    r = await sqlite_harness.client.post("/api/v1/images/generations", json=SEED, headers=headers)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"


async def test_revoked_key_fails_at_once(sqlite_harness: AppHarness) -> None:
    caller = await sqlite_harness.caller()
    assert (await caller.get("/api/v1/account")).status_code == 200
    keys = await sqlite_harness.container.accounts.list_api_keys(caller.account_id)
    key_hash = await sqlite_harness.container.accounts.revoke_api_key(caller.account_id, keys[0].id)
    sqlite_harness.container.keys.invalidate(key_hash)
    r = await caller.get("/api/v1/account")
    assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]


async def test_insufficient_credits_is_402_and_nothing_is_created(harness: AppHarness) -> None:
    caller = await harness.caller(credits=1)
    r = await caller.post("/api/v1/images/generations", json={**SEED, "quality": "high"})
    assert r.status_code == 402 and r.json()["error"]["code"] == "insufficient_credits"
    assert (await caller.get("/api/v1/tasks")).json()["data"] == []


async def test_tenant_isolation_other_accounts_task_is_404(harness: AppHarness) -> None:
    alice, bob = await harness.caller(), await harness.caller()
    task_id = (await alice.post("/api/v1/images/generations", json=SEED)).json()["task_id"]
    for r in (await bob.get(f"/api/v1/tasks/{task_id}"), await bob.post(f"/api/v1/tasks/{task_id}/cancel")):
        assert r.status_code == 404 and r.json()["error"]["code"] == "task_not_found"
    assert (await bob.get("/api/v1/tasks")).json()["data"] == []


async def test_list_pagination_and_filters(tmp_path: object, sqlite_url: str) -> None:
    from pathlib import Path

    from tests.conftest import make_settings

    async with AppHarness(make_settings(Path(str(tmp_path)), sqlite_url), embedded_worker=False) as h:
        caller = await h.caller(credits=100)
        ids = [(await caller.post("/api/v1/images/generations", json=SEED)).json()["task_id"] for _ in range(5)]
        page1 = (await caller.get("/api/v1/tasks", params={"limit": 2})).json()
        assert [t["task_id"] for t in page1["data"]] == ids[::-1][:2] and page1["next_cursor"]
        page2 = (await caller.get("/api/v1/tasks", params={"limit": 2, "cursor": page1["next_cursor"]})).json()
        assert [t["task_id"] for t in page2["data"]] == ids[::-1][2:4]
        page3 = (await caller.get("/api/v1/tasks", params={"limit": 2, "cursor": page2["next_cursor"]})).json()
        assert [t["task_id"] for t in page3["data"]] == ids[:1] and page3["next_cursor"] is None
        queued = (await caller.get("/api/v1/tasks", params={"status": "queued", "model": "typeset"})).json()
        assert len(queued["data"]) == 5
        assert (await caller.get("/api/v1/tasks", params={"status": "succeeded"})).json()["data"] == []
        bad = await caller.get("/api/v1/tasks", params={"limit": 0})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "limit"
        bad = await caller.get("/api/v1/tasks", params={"status": "done"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "status"


async def test_cancel_queued_task_releases_credits(tmp_path: object, database_url: str) -> None:
    from pathlib import Path

    from tests.conftest import make_settings

    async with AppHarness(make_settings(Path(str(tmp_path)), database_url), embedded_worker=False) as h:
        caller = await h.caller(credits=5)
        task_id = (await caller.post("/api/v1/images/generations", json={**SEED, "quality": "high"})).json()["task_id"]
        assert (await caller.get("/api/v1/account")).json()["credits"] == {"balance": 5, "held": 2, "available": 3}
        r = await caller.post(f"/api/v1/tasks/{task_id}/cancel")
        assert r.status_code == 200 and r.json()["status"] == "canceled" and r.json()["credits"]["charged"] == 0
        assert (await caller.get("/api/v1/account")).json()["credits"] == {"balance": 5, "held": 0, "available": 5}
        again = await caller.post(f"/api/v1/tasks/{task_id}/cancel")
        assert again.status_code == 409 and again.json()["error"]["code"] == "task_not_cancelable"
        kinds = [e["kind"] for e in (await caller.get("/api/v1/account/ledger")).json()["data"]]
        assert kinds == ["release", "hold", "grant"]


async def test_models_need_no_key(sqlite_harness: AppHarness) -> None:
    r = await sqlite_harness.client.get("/api/v1/models")
    models = {m["id"]: m for m in r.json()["data"]}
    assert models["gpt-image-1.5-official"]["pricing"] == {"medium": 10, "high": 28}
    assert models["gpt-image-1.5-official"]["available"] is False
    assert models["local-typeset"]["available"] is True
    assert "gpt-image-1-5" in models["gpt-image-1.5-official"]["aliases"]
    one = await sqlite_harness.client.get("/api/v1/models/gpt-image-1-5")
    assert one.json()["id"] == "gpt-image-1.5-official"
    assert one.json()["parameters"]["properties"]["aspect_ratio"]["enum"] == ["1:1", "2:3", "3:2"]
    missing = await sqlite_harness.client.get("/api/v1/models/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


async def test_ops_routes(sqlite_harness: AppHarness) -> None:
    c = sqlite_harness.client
    assert (await c.get("/healthz")).json() == {"status": "ok"}
    assert (await c.get("/readyz")).json() == {"status": "ready"}
    spec = (await c.get("/openapi.json")).json()
    assert "/api/v1/images/generations" in spec["paths"]
    assert (await c.get("/metrics")).status_code == 200
    r = await c.get("/no/such/route")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert (await c.get("/files/../../etc/passwd")).status_code == 404


async def test_chunked_body_over_one_megabyte_is_413_without_buffering_it_all(sqlite_harness: AppHarness) -> None:
    caller = await sqlite_harness.caller()
    async def chunks():  # no Content-Length: the server must count while streaming
        for _ in range(64):
            yield b" " * (64 * 1024)

    r = await caller.post("/api/v1/images/generations", content=chunks())
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    r = await caller.post("/api/v1/images/generations", content=b"{}", headers={"content-length": str(2 * 1024 * 1024)})
    assert r.status_code == 413
