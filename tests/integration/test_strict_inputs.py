"""Hostile headers, query strings and form fields: a 400 naming the field, before any state changes.

Each case here answered 500 (some after the task was created and charged) or silently accepted a
Unicode digit before the one strict integer parser (``apiinone.params``) was used everywhere.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import AppHarness, Caller

SEED = {"model": "local-typeset", "prompt": "Bean & Brew", "quality": "medium", "aspect_ratio": "1:1"}
BAD_INTEGERS = ["²", "١", "٣", "1.5", "-1", " 1", "0x10", "99999999999999999999999", ""]


async def _state(caller: Caller) -> tuple[Any, int]:
    credits = (await caller.get("/api/v1/account")).json()["credits"]
    tasks = (await caller.get("/api/v1/tasks", params={"limit": 100})).json()["data"]
    return credits, len(tasks)


def _assert_invalid(response: Any, param: str) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_parameter" and error["param"] == param, error


@pytest.mark.parametrize("wait", ["²", "١", "-1", "1.5", "soon", "99999999999999999999999"])
async def test_bad_prefer_wait_is_refused_before_the_task_is_created(sqlite_harness: AppHarness, wait: str) -> None:
    caller = await sqlite_harness.caller(credits=10)
    before = await _state(caller)
    r = await caller.post("/api/v1/images/generations", json=SEED, headers={"Prefer": f"wait={wait}".encode()})
    _assert_invalid(r, "Prefer")
    assert await _state(caller) == before  # nothing created, nothing held


async def test_prefer_wait_still_works_and_is_capped(sqlite_harness: AppHarness) -> None:
    caller = await sqlite_harness.caller(credits=10)
    r = await caller.post("/api/v1/images/generations", json=SEED, headers={"Prefer": "respond-async, wait=600"})
    assert r.status_code in (200, 202) and r.headers["preference-applied"] == "wait=60"


@pytest.mark.parametrize("value", BAD_INTEGERS)
@pytest.mark.parametrize("path", ["/api/v1/tasks", "/api/v1/account/ledger"])
async def test_list_limit_is_an_ascii_integer_in_range(sqlite_harness: AppHarness, path: str, value: str) -> None:
    caller = await sqlite_harness.caller()
    _assert_invalid(await caller.get(path, params={"limit": value}), "limit")


@pytest.mark.parametrize("value", ["0", "101"])
async def test_list_limit_range(sqlite_harness: AppHarness, value: str) -> None:
    caller = await sqlite_harness.caller()
    _assert_invalid(await caller.get("/api/v1/tasks", params={"limit": value}), "limit")


@pytest.mark.parametrize("cursor", ["²", "nope", "tsk_", "tsk_0123", "acc_01JD7Q0000000000000000000X", "' OR 1=1 --"])
async def test_bad_task_list_cursor_is_refused(sqlite_harness: AppHarness, cursor: str) -> None:
    caller = await sqlite_harness.caller()
    _assert_invalid(await caller.get("/api/v1/tasks", params={"cursor": cursor}), "cursor")


@pytest.mark.parametrize("cursor", ["²", "١", "99999999999999999999999", "x"])
async def test_bad_ledger_cursor_is_refused(sqlite_harness: AppHarness, cursor: str) -> None:
    caller = await sqlite_harness.caller()
    _assert_invalid(await caller.get("/api/v1/account/ledger", params={"cursor": cursor}), "cursor")


async def test_unknown_ledger_kind_is_refused(sqlite_harness: AppHarness) -> None:
    caller = await sqlite_harness.caller()
    _assert_invalid(await caller.get("/api/v1/account/ledger", params={"kind": "refund"}), "kind")


async def test_task_list_cursor_pages_through(sqlite_harness: AppHarness) -> None:
    caller = await sqlite_harness.caller(credits=10)
    for _ in range(3):
        assert (await caller.post("/api/v1/images/generations", json=SEED)).status_code == 202
    first = (await caller.get("/api/v1/tasks", params={"limit": 2})).json()
    assert len(first["data"]) == 2 and first["next_cursor"]
    second = (await caller.get("/api/v1/tasks", params={"limit": 2, "cursor": first["next_cursor"]})).json()
    assert len(second["data"]) == 1 and second["next_cursor"] is None


@pytest.mark.parametrize(("header", "param"), [("²", "Last-Event-ID"), ("١", "Last-Event-ID"), ("x", "Last-Event-ID"),
                                               ("99999999999999999999999", "Last-Event-ID")])
async def test_bad_last_event_id_header(sqlite_harness: AppHarness, header: str, param: str) -> None:
    caller = await sqlite_harness.caller(credits=10)
    task = (await caller.post("/api/v1/images/generations", json=SEED)).json()
    r = await caller.get(f"/api/v1/tasks/{task['task_id']}/events",
                         headers={"Last-Event-ID": header.encode()})
    _assert_invalid(r, param)


@pytest.mark.parametrize("value", ["²", "١", "-2"])
async def test_bad_last_event_id_query(sqlite_harness: AppHarness, value: str) -> None:
    caller = await sqlite_harness.caller(credits=10)
    task = (await caller.post("/api/v1/images/generations", json=SEED)).json()
    r = await caller.get(f"/api/v1/tasks/{task['task_id']}/events", params={"last_event_id": value})
    _assert_invalid(r, "last_event_id")


async def test_idempotency_key_length_counts_characters(sqlite_harness: AppHarness) -> None:
    caller = await sqlite_harness.caller(credits=10)
    key = "键" * 255  # 765 bytes of UTF-8, 255 characters
    r = await caller.post("/api/v1/images/generations", json=SEED, headers={"Idempotency-Key": key.encode()})
    assert r.status_code == 202, r.text
    again = await caller.post("/api/v1/images/generations", json=SEED, headers={"Idempotency-Key": key.encode()})
    assert again.headers["idempotent-replayed"] == "true" and again.json()["task_id"] == r.json()["task_id"]
    longer = await caller.post("/api/v1/images/generations", json=SEED,
                               headers={"Idempotency-Key": (key + "键").encode()})
    _assert_invalid(longer, "Idempotency-Key")
    not_utf8 = await caller.post("/api/v1/images/generations", json=SEED, headers={"Idempotency-Key": b"\xff\xfe"})
    _assert_invalid(not_utf8, "Idempotency-Key")


@pytest.mark.parametrize("prompt", ["Bean\x00Brew", "Bean\x1b[31mBrew", "a\rb", "x\x7fy", "a\x85b"])
async def test_control_characters_in_prompt_are_refused(sqlite_harness: AppHarness, prompt: str) -> None:
    caller = await sqlite_harness.caller(credits=10)
    before = await _state(caller)
    _assert_invalid(await caller.post("/api/v1/images/generations", json={**SEED, "prompt": prompt}), "prompt")
    r = await caller.post("/v1/images/generations", json={"model": "local-typeset", "prompt": prompt})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt", r.text
    assert await _state(caller) == before


async def test_tab_newline_and_crlf_are_fine_in_prompts(sqlite_harness: AppHarness) -> None:
    caller = await sqlite_harness.caller(credits=10)
    r = await caller.post("/api/v1/images/generations", json={**SEED, "prompt": "Bean\tBrew\nline two\r\nthree"})
    assert r.status_code == 202, r.text


# --- the OpenAI-compatible image routes: n and output_compression, JSON and multipart ---------


@pytest.mark.parametrize("value", ["١", "²", "٣", "1.5", " 2", "99999999999999999999999", True, 2.0])
@pytest.mark.parametrize("name", ["n", "output_compression"])
async def test_v1_generation_integers_are_strict(sqlite_harness: AppHarness, name: str, value: object) -> None:
    caller = await sqlite_harness.caller(credits=100)
    before = await _state(caller)
    r = await caller.post("/v1/images/generations",
                          json={"model": "local-typeset", "prompt": "Bean & Brew", name: value})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == name and error["type"] == "invalid_request_error", error
    assert await _state(caller) == before


@pytest.mark.parametrize("value", ["١", "²", "1.5", "11", "0", "99999999999999999999999"])
@pytest.mark.parametrize("name", ["n", "output_compression"])
async def test_v1_edit_integers_are_strict(sqlite_harness: AppHarness, name: str, value: str) -> None:
    from tests.integration.test_openai_compat import png_bytes

    if name == "output_compression" and value in ("11", "0"):
        value = "101"
    caller = await sqlite_harness.caller(credits=100)
    before = await _state(caller)
    r = await caller.post("/v1/images/edits", data={"model": "local-typeset", "prompt": "Bean", name: value},
                          files={"image": ("a.png", png_bytes(), "image/png")})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == name
    assert await _state(caller) == before


async def test_v1_idempotency_key_counts_characters(sqlite_harness: AppHarness) -> None:
    caller = await sqlite_harness.caller(credits=10)
    before = await _state(caller)
    r = await caller.post("/v1/images/generations", json={"model": "local-typeset", "prompt": "Bean"},
                          headers={"Idempotency-Key": ("键" * 256).encode()})
    assert r.status_code == 400 and r.json()["error"]["param"] == "Idempotency-Key", r.text
    assert await _state(caller) == before


# --- /files/: any key the storage refuses is unknown -----------------------------------------


@pytest.mark.parametrize("path", ["/files//etc/passwd", "/files/%2fetc%2fpasswd", "/files/abcdefgh/.ct-x",
                                  "/files/abcdefgh/../../x.png", "/files/abcdefgh//x.png", "/files/abcdefgh/./x.png",
                                  "/files/abcdefgh/%00.png", "/files/" + "a" * 600])
async def test_files_route_answers_404_for_keys_the_storage_refuses(
        sqlite_harness: AppHarness, path: str, capsys: pytest.CaptureFixture[str]) -> None:
    r = await sqlite_harness.client.get(path)
    assert r.status_code == 404, r.text
    assert r.json()["error"]["code"] == "not_found"
    assert "unhandled_error" not in capsys.readouterr().out


@pytest.mark.parametrize("cursor", ["²", "١", "9999999999999999999", "99999999999999999999999", "tsk_x", "-1"])
@pytest.mark.parametrize("page", ["/console/tasks", "/console/billing"])
async def test_console_pages_ignore_unreadable_cursors(sqlite_harness: AppHarness, page: str, cursor: str) -> None:
    from tests.integration.test_console_web import browser, signup

    async with browser(sqlite_harness) as client:
        assert (await signup(client)).status_code == 303
        r = await client.get(page, params={"cursor": cursor})
        assert r.status_code == 200, r.text[:500]


async def test_prefer_wait_failure_after_accept_still_answers_the_task(
        sqlite_harness: AppHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    """The task is created and held before the wait: if the wait fails (database gone), the client
    gets its task (202), never an error it would retry and pay for twice."""
    caller = await sqlite_harness.caller(credits=10)

    async def outage(*_args: object, **_kw: object) -> object:
        raise ConnectionRefusedError("injected: database gone during the wait")

    monkeypatch.setattr(sqlite_harness.container.task_events, "wait_for_end", outage)
    r = await caller.post("/api/v1/images/generations", json=SEED, headers={"Prefer": "wait=5"})
    assert r.status_code == 202, r.text
    monkeypatch.undo()
    assert (await caller.get(f"/api/v1/tasks/{r.json()['task_id']}")).status_code == 200
