"""The chat console and the offline model, in-process on both databases: the chat model page
(context window, prices per million tokens, curl and SDK examples), the playground's same-origin
streaming route (session + CSRF, no key; a receipt with the exact charge), per-key allowlists and
budgets on chat, and chat calls in the request log."""

from __future__ import annotations

import json
import re

import httpx
import pytest

from apiinone.kinds.chat import estimate_input_tokens, estimate_tokens
from tests.conftest import AppHarness

ECHO_IN, ECHO_OUT = 10, 20  # local-echo: µcr per input / output token


async def logged_in(h: AppHarness, credits: int = 5) -> tuple[httpx.AsyncClient, str]:
    caller = await h.caller(credits=credits)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=h.app), base_url="http://testserver")
    page = (await client.get("/login")).text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert token
    r = await client.post("/login", data={"email": caller.email, "password": "password123",
                                          "csrf_token": token.group(1)})
    assert r.status_code == 303
    return client, caller.account_id


async def balance(h: AppHarness, account_id: str) -> int:
    async with h.container.db.uow(write=False) as uow:
        return (await uow.accounts.credits(account_id)).balance


async def test_chat_model_page_and_list(harness: AppHarness) -> None:
    page = await harness.client.get("/models/local-echo")
    assert page.status_code == 200
    html = page.text
    assert 'data-testid="context-window"' in html and "32768" in html and "4096" in html
    assert "/v1/chat/completions" in html and "from openai import OpenAI" in html
    assert "10" in re.search(r'data-testid="chat-prices".*?</table>', html, re.S).group(0)  # type: ignore[union-attr]
    listing = (await harness.client.get("/models")).text
    assert "local-echo" in listing and "gpt-4o" in listing
    zh = await harness.client.get("/models/gpt-4o?lang=zh-CN")
    assert zh.status_code == 200 and "上下文窗口" in zh.text and "128000" in zh.text


async def test_playground_streams_with_session_and_csrf_and_shows_the_charge(harness: AppHarness) -> None:
    client, account_id = await logged_in(harness)
    try:
        html = (await client.get("/models/local-echo")).text
        csrf = re.search(r'data-csrf="([^"]+)"', html)
        assert csrf and 'id="chat-playground"' in html
        body = {"model": "local-echo", "stream": True, "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": "hello playground"}]}
        refused = await client.post("/console/api/chat/completions", json=body)
        assert refused.status_code == 403
        before = await balance(harness, account_id)
        r = await client.post("/console/api/chat/completions", json=body, headers={"X-CSRF-Token": csrf.group(1)})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        frames = [f for f in r.text.split("\n\n") if f]
        assert frames[-1] == "data: [DONE]"
        receipt_frame = [f for f in frames if f.startswith("event: receipt")]
        assert len(receipt_frame) == 1
        receipt = json.loads(receipt_frame[0].split("data: ", 1)[1])
        text = "".join(json.loads(f[6:])["choices"][0]["delta"].get("content", "") for f in frames
                       if f.startswith("data: {") and json.loads(f[6:]).get("choices"))
        assert text == "hello playground"
        expected = estimate_input_tokens(body) * ECHO_IN + estimate_tokens(len(b"hello playground")) * ECHO_OUT
        assert before - await balance(harness, account_id) == expected
        assert receipt["credits"] == expected / 1_000_000
        assert (receipt["input_tokens"], receipt["output_tokens"]) == (estimate_input_tokens(body), 4)
    finally:
        await client.aclose()


async def test_key_allowlist_and_budget_apply_to_chat(harness: AppHarness) -> None:
    caller = await harness.caller(credits=5)
    only_images = await harness.container.accounts.create_api_key(caller.account_id, "img",
                                                                  allowed_models=["local-typeset"])
    body = {"model": "local-echo", "messages": [{"role": "user", "content": "hi"}]}
    r = await harness.client.post("/v1/chat/completions", json=body,
                                  headers={"Authorization": f"Bearer {only_images.plaintext}"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    tiny = await harness.container.accounts.create_api_key(caller.account_id, "tiny", credit_budget=1000)
    r = await harness.client.post("/api/v1/chat/completions", json=body,
                                  headers={"Authorization": f"Bearer {tiny.plaintext}"})
    assert r.status_code == 402 and r.json()["error"]["code"] == "insufficient_credits"
    r = await harness.client.post("/v1/chat/completions", json={**body, "max_tokens": 10},
                                  headers={"Authorization": f"Bearer {tiny.plaintext}"})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "hi"
    assert await balance(harness, caller.account_id) == 5_000_000 - r.json()["usage"]["prompt_tokens"] * ECHO_IN \
        - r.json()["usage"]["completion_tokens"] * ECHO_OUT


async def test_chat_calls_are_in_the_request_log(harness: AppHarness) -> None:
    caller = await harness.caller(credits=5)
    headers = {"Authorization": f"Bearer {caller.key}"}
    r = await harness.client.post("/api/v1/chat/completions", headers=headers,
                                  json={"model": "echo", "messages": [{"role": "user", "content": "log me"}]})
    assert r.status_code == 200
    streamed = await harness.client.post("/api/v1/chat/completions", headers=headers, json={
        "model": "local-echo", "stream": True, "messages": [{"role": "user", "content": "stream me"}]})
    assert streamed.status_code == 200 and streamed.text.endswith("data: [DONE]\n\n")
    log = (await harness.client.get("/api/v1/account/requests?type=chat", headers=headers)).json()["data"]
    assert [(e["type"], e["model"], e["status"], e["http_status"]) for e in log] == [
        ("chat", "local-echo", "succeeded", 200)] * 2
    assert log[1]["output_tokens"] == r.json()["usage"]["completion_tokens"] and log[1]["ttft_ms"] is None
    assert log[0]["ttft_ms"] is not None and log[0]["output_tokens"] == estimate_tokens(len(b"stream me"))


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/v1/chat/completions"])
async def test_no_key_is_401_in_each_shape(harness: AppHarness, path: str) -> None:
    r = await harness.client.post(path, json={"model": "local-echo", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 401
    error = r.json()["error"]
    assert ("type" in error) == path.startswith("/v1")
