"""No input makes the chat routes answer 500: malformed bodies of every shape get a 400 in the
route's own error shape, and nothing is held or charged for them."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import AppHarness

ODD_BODIES: list[Any] = [
    None, [], "text", 5, {}, {"model": None}, {"model": "local-echo"}, {"model": "local-echo", "messages": {}},
    {"model": "local-echo", "messages": [None]}, {"model": "local-echo", "messages": [{"content": "x"}]},
    {"model": "local-echo", "messages": [{"role": "user", "content": [None]}]},
    {"model": "local-echo", "messages": [{"role": "user", "content": [{"type": "text"}]}]},
    {"model": "local-echo", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]},
    {"model": "local-echo", "messages": [{"role": "user", "content": 5}]},
    {"model": "local-echo", "messages": [{"role": "assistant", "content": None, "tool_calls": [{}]}]},
    {"model": "local-echo", "messages": [{"role": "user", "content": "x"}], "tools": "f"},
    {"model": "local-echo", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]},
    {"model": "local-echo", "messages": [{"role": "user", "content": "x"}], "tool_choice": 3},
    {"model": "local-echo", "messages": [{"role": "user", "content": "x"}], "max_tokens": 10**30},
    {"model": "local-echo", "messages": [{"role": "user", "content": "x"}], "max_tokens": True},
    {"model": "local-echo", "messages": [{"role": "user", "content": "x"}], "stop": [1]},
    {"model": "local-echo", "messages": [{"role": "user", "content": "x"}], "stream": True, "stream_options": 1},
    {"model": "local-echo", "messages": [{"role": "user", "content": "x"}], "response_format": "json"},
    {"model": "local-echo", "messages": [{"role": "user", "content": "x"}], "n": 10**30},
    {"model": "x" * 5000, "messages": [{"role": "user", "content": "x"}]},
]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/v1/chat/completions"])
async def test_odd_bodies_are_400s_in_the_route_shape(harness: AppHarness, path: str) -> None:
    caller = await harness.caller(credits=1)
    headers = {"Authorization": f"Bearer {caller.key}"}
    for body in ODD_BODIES:
        r = await harness.client.post(path, json=body, headers=headers)
        assert r.status_code in (400, 404), (body, r.status_code, r.text)
        error = r.json()["error"]
        assert ("type" in error) == path.startswith("/v1"), r.text
    r = await harness.client.post(path, content=b"\xff\xfe not json", headers=headers)
    assert r.status_code == 400
    async with harness.container.db.uow(write=False) as uow:
        credits = await uow.accounts.credits(caller.account_id)
    assert (credits.balance, credits.held) == (1_000_000, 0)
