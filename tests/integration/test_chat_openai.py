"""Chat Completions end to end: the official ``openai`` SDK (sync, async, streaming, tool calls)
against a real server in front of the fake OpenAI chat upstream, on SQLite and PostgreSQL.

Every test checks the money to the micro-credit: the balance moves by exactly the cost of the
usage the upstream reported (or, for a cut stream, of what was produced), once, and a call that
was refused or never answered costs nothing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import select

from apiinone.db import tables as t
from apiinone.kinds.chat import estimate_input_tokens, estimate_tokens
from tests.conftest import Caller
from tests.fakes.fake_openai_chat import DEFAULT_REPLY, FakeOpenAIChat
from tests.integration.live_server import LiveServer

IN_UCR, OUT_UCR = 150, 600  # µcr per token: 150 / 600 credits per million tokens
MAX_OUT = 1000
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                           "parameters": {"type": "object",
                                                          "properties": {"location": {"type": "string"}}}}}]


def catalog_file(tmp_path: Path, primary: str, backup: str) -> Path:
    path = tmp_path / "models.toml"
    model = """
[[models]]
id = "{id}"
name = "{id}"
type = "chat"
provider = "openai"
upstream_model = "gpt-4o-mini"
pricing = {{ input_per_mtok = 150, output_per_mtok = 600 }}
context_window = 128000
max_output_tokens = {max_out}
"""
    route = """
[[models.routes]]
name = "{name}"
provider = "openai"
base_url = "{url}"
api_key_env = "FAKE_CHAT_KEY"
priority = {priority}
"""
    text = model.format(id="fake-gpt", max_out=MAX_OUT) + route.format(name="primary", url=primary, priority=0)
    text += model.format(id="fake-gpt-failover", max_out=MAX_OUT)
    text += route.format(name="first", url=primary, priority=0) + route.format(name="second", url=backup, priority=1)
    path.write_text(text)
    return path


@pytest.fixture
def fakes() -> Iterator[tuple[FakeOpenAIChat, FakeOpenAIChat]]:
    with FakeOpenAIChat() as primary, FakeOpenAIChat(reply="The backup route answers.") as backup:
        yield primary, backup


@pytest.fixture
async def server(tmp_path: Path, database_url: str, fakes: tuple[FakeOpenAIChat, FakeOpenAIChat],
                 monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[LiveServer]:
    primary, backup = fakes
    monkeypatch.setenv("FAKE_CHAT_KEY", primary.api_key)
    backup.state.api_key = primary.api_key
    models = catalog_file(tmp_path, primary.base_url, backup.base_url)
    async with LiveServer(tmp_path, database_url, embedded_worker=False, models_file=models,
                          route_backoff_s=0.0) as live:
        yield live


async def balance(live: LiveServer, account_id: str) -> int:
    async with live.container.db.uow(write=False) as uow:
        credits = await uow.accounts.credits(account_id)
    assert credits.available >= 0
    return credits.balance


async def held(live: LiveServer, account_id: str) -> int:
    async with live.container.db.uow(write=False) as uow:
        return (await uow.accounts.credits(account_id)).held


async def log_rows(live: LiveServer, account_id: str) -> list[Any]:
    async with live.container.db.uow(write=False) as uow:
        rows = (await uow.conn.execute(select(t.request_log).where(t.request_log.c.account_id == account_id)
                                       .order_by(t.request_log.c.id))).mappings().all()
    return list(rows)


async def captures(live: LiveServer, account_id: str) -> list[int]:
    async with live.container.db.uow(write=False) as uow:
        rows = (await uow.conn.execute(select(t.ledger_entries.c.amount).where(
            (t.ledger_entries.c.account_id == account_id) & (t.ledger_entries.c.kind == "capture")))).scalars().all()
    return [int(r) for r in rows]


def cost(prompt: int, completion: int) -> int:
    return prompt * IN_UCR + completion * OUT_UCR


def sdk(live: LiveServer, caller: Caller, **kw: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=caller.key, base_url=f"{live.base_url}/v1", max_retries=0, **kw)


async def wait_for(predicate: Any, what: str) -> None:
    for _ in range(1000):
        if await predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


# ----------------------------------------------------------------------------------------- the SDK


async def test_sdk_sync_call_text_and_usage_unchanged_and_charged_exactly(server: LiveServer,
                                                                          fakes: tuple[FakeOpenAIChat, ...]) -> None:
    caller = await server.caller(credits=10)
    before = await balance(server, caller.account_id)

    def call() -> Any:
        client = openai.OpenAI(api_key=caller.key, base_url=f"{server.base_url}/v1", max_retries=0)
        return client.chat.completions.create(model="fake-gpt", messages=[
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}])

    answer = await asyncio.to_thread(call)
    assert answer.choices[0].message.content == DEFAULT_REPLY
    assert answer.choices[0].finish_reason == "stop"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (7 * 2 + 3, len(DEFAULT_REPLY.split()))
    assert before - await balance(server, caller.account_id) == cost(answer.usage.prompt_tokens,
                                                                    answer.usage.completion_tokens)
    assert await held(server, caller.account_id) == 0
    sent = fakes[0].requests[-1].json
    assert sent["model"] == "gpt-4o-mini" and sent["max_completion_tokens"] == MAX_OUT and "stream" not in sent
    [row] = await log_rows(server, caller.account_id)
    assert (row["type"], row["model"], row["route"], row["status"], row["http_status"]) == (
        "chat", "fake-gpt", "primary", "succeeded", 200)
    assert (row["input_tokens"], row["output_tokens"]) == (answer.usage.prompt_tokens, answer.usage.completion_tokens)


async def test_sdk_async_stream_with_usage_passes_chunks_through(server: LiveServer,
                                                                 fakes: tuple[FakeOpenAIChat, ...]) -> None:
    caller = await server.caller(credits=10)
    before = await balance(server, caller.account_id)
    client = sdk(server, caller)
    stream = await client.chat.completions.create(model="fake-gpt", messages=[{"role": "user", "content": "Hi"}],
                                                  stream=True, stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == DEFAULT_REPLY
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    usage = chunks[-1].usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (10, len(DEFAULT_REPLY.split()))
    assert before - await balance(server, caller.account_id) == cost(usage.prompt_tokens, usage.completion_tokens)
    [row] = await log_rows(server, caller.account_id)
    assert row["status"] == "succeeded" and row["ttft_ms"] is not None and row["output_tokens"] == usage.completion_tokens


async def test_stream_without_include_usage_strips_the_usage_chunk_but_charges_reported_usage(
        server: LiveServer, fakes: tuple[FakeOpenAIChat, ...]) -> None:
    caller = await server.caller(credits=10)
    before = await balance(server, caller.account_id)
    async with server.client.stream("POST", "/v1/chat/completions", headers={"Authorization": f"Bearer {caller.key}"},
                                    json={"model": "fake-gpt", "stream": True,
                                          "messages": [{"role": "user", "content": "Hi"}]}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = (await response.aread()).decode()
    events = [e.removeprefix("data: ") for e in raw.split("\n\n") if e]
    assert events[-1] == "[DONE]"
    assert all(json.loads(e)["choices"] for e in events[:-1])  # no usage-only chunk
    assert fakes[0].requests[-1].json["stream_options"] == {"include_usage": True}  # forced upstream
    assert before - await balance(server, caller.account_id) == cost(10, len(DEFAULT_REPLY.split()))


async def test_sdk_tool_calls_plain_and_streamed(server: LiveServer) -> None:
    caller = await server.caller(credits=10)
    client = sdk(server, caller)
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    answer = await client.chat.completions.create(model="fake-gpt", messages=messages, tools=TOOLS,
                                                  tool_choice="auto")
    [call] = answer.choices[0].message.tool_calls or []
    assert answer.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"location": "Paris, France", "unit": "celsius"}

    before = await balance(server, caller.account_id)
    stream = await client.chat.completions.create(model="fake-gpt", messages=messages, tools=TOOLS, stream=True,
                                                  stream_options={"include_usage": True})
    arguments, names, finish, usage = "", [], None, None
    async for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for delta in choice.delta.tool_calls or []:
                if delta.function and delta.function.name:
                    names.append(delta.function.name)
                arguments += (delta.function.arguments or "") if delta.function else ""
    assert names == ["get_weather"] and finish == "tool_calls"
    assert json.loads(arguments) == {"location": "Paris, France", "unit": "celsius"}
    assert usage is not None
    assert before - await balance(server, caller.account_id) == cost(usage.prompt_tokens, usage.completion_tokens)

    follow_up = [*messages, {"role": "assistant", "content": None, "tool_calls": [
        {"id": call.id, "type": "function", "function": {"name": "get_weather", "arguments": call.function.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": "18 °C, sunny"}]
    final = await client.chat.completions.create(model="fake-gpt", messages=follow_up, tools=TOOLS)
    assert final.choices[0].message.content == DEFAULT_REPLY


# ------------------------------------------------------------------------------------------ errors


async def test_out_of_credits_is_refused_before_anything_goes_upstream(server: LiveServer,
                                                                       fakes: tuple[FakeOpenAIChat, ...]) -> None:
    caller = await server.caller(credits=0)
    received = fakes[0].state.received
    with pytest.raises(openai.RateLimitError) as raised:
        await sdk(server, caller).chat.completions.create(model="fake-gpt", messages=[{"role": "user", "content": "x"}])
    assert raised.value.code == "insufficient_quota"
    assert raised.value.response.headers["x-should-retry"] == "false"
    api = await server.client.post("/api/v1/chat/completions", headers={"Authorization": f"Bearer {caller.key}"},
                                   json={"model": "fake-gpt", "messages": [{"role": "user", "content": "x"}]})
    assert api.status_code == 402 and api.json()["error"]["code"] == "insufficient_credits"
    assert fakes[0].state.received == received
    assert await log_rows(server, caller.account_id) == []


@pytest.mark.parametrize(("body", "param", "code"), [
    ({"n": 2}, "n", "integer_out_of_range"),
    ({"frobnicate": True}, "frobnicate", "unknown_parameter"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role", "invalid_value"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]}]},
     "messages[0].content[0].image_url.url", "invalid_image_url"),
    ({"stream_options": {"include_usage": True}}, "stream_options", "invalid_value"),
    ({"max_tokens": MAX_OUT + 1}, "max_tokens", "integer_out_of_range"),
    ({"temperature": 3}, "temperature", "decimal_out_of_range"),
    ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice", "invalid_value"),
    ({"model": "local-typeset"}, "model", "invalid_parameter"),
])
async def test_invalid_requests_are_400_on_both_routes_and_cost_nothing(
        server: LiveServer, fakes: tuple[FakeOpenAIChat, ...], body: dict[str, Any], param: str, code: str) -> None:
    caller = await server.caller(credits=10)
    payload = {"model": "fake-gpt", "messages": [{"role": "user", "content": "x"}], **body}
    headers = {"Authorization": f"Bearer {caller.key}"}
    received = fakes[0].state.received
    v1 = await server.client.post("/v1/chat/completions", headers=headers, json=payload)
    assert v1.status_code == 400
    assert v1.json()["error"]["param"] == param and v1.json()["error"]["type"] == "invalid_request_error"
    assert v1.json()["error"]["code"] == code
    api = await server.client.post("/api/v1/chat/completions", headers=headers, json=payload)
    assert api.status_code == 400
    assert api.json()["error"] == {"code": "invalid_parameter", "message": api.json()["error"]["message"],
                                   "param": param}
    assert fakes[0].state.received == received
    assert await balance(server, caller.account_id) == 10_000_000


async def test_wrong_type_and_unknown_model_and_bad_key(server: LiveServer) -> None:
    caller = await server.caller(credits=10)
    client = sdk(server, caller)
    with pytest.raises(openai.BadRequestError) as wrong:
        await client.chat.completions.create(model="local-typeset", messages=[{"role": "user", "content": "x"}])
    assert "/api/v1/images/generations" in str(wrong.value)
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.AuthenticationError):
        await openai.AsyncOpenAI(api_key="aio_wrong", base_url=f"{server.base_url}/v1", max_retries=0) \
            .chat.completions.create(model="fake-gpt", messages=[{"role": "user", "content": "x"}])
    bad_json = await server.client.post("/v1/chat/completions", content=b"{nope",
                                        headers={"Authorization": f"Bearer {caller.key}",
                                                 "Content-Type": "application/json"})
    assert bad_json.status_code == 400 and bad_json.json()["error"]["code"] == "invalid_json"


async def test_upstream_refusal_is_a_400_and_costs_nothing(server: LiveServer,
                                                           fakes: tuple[FakeOpenAIChat, ...]) -> None:
    caller = await server.caller(credits=10)
    fakes[0].fail_next(400, body={"error": {"message": "Invalid 'messages[0].content': too long.",
                                            "type": "invalid_request_error", "param": "messages", "code": None}})
    with pytest.raises(openai.BadRequestError) as raised:
        await sdk(server, caller).chat.completions.create(model="fake-gpt-failover",
                                                          messages=[{"role": "user", "content": "x"}])
    assert "too long" in str(raised.value)
    assert fakes[1].state.received == 0  # a refusal is not failed over
    assert await balance(server, caller.account_id) == 10_000_000 and await held(server, caller.account_id) == 0
    [row] = await log_rows(server, caller.account_id)
    assert (row["status"], row["http_status"], row["credits"]) == ("failed", 400, 0)


# ---------------------------------------------------------------------------------------- failover


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("status", "headers"), [(500, {}), (429, {"retry-after": "0"})])
async def test_failover_to_the_second_route_charged_once(server: LiveServer, fakes: tuple[FakeOpenAIChat, ...],
                                                         stream: bool, status: int, headers: dict[str, str]) -> None:
    primary, backup = fakes
    caller = await server.caller(credits=10)
    primary.fail_next(status, count=5, headers=headers)
    before = await balance(server, caller.account_id)
    client = sdk(server, caller)
    messages: Any = [{"role": "user", "content": "Anyone there?"}]
    if stream:
        chunks = [c async for c in await client.chat.completions.create(
            model="fake-gpt-failover", messages=messages, stream=True, stream_options={"include_usage": True})]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        usage = chunks[-1].usage
    else:
        answer = await client.chat.completions.create(model="fake-gpt-failover", messages=messages)
        text, usage = answer.choices[0].message.content or "", answer.usage
    assert text == "The backup route answers."
    assert usage is not None
    assert primary.state.received >= 1 and backup.state.received == 1
    assert before - await balance(server, caller.account_id) == cost(usage.prompt_tokens, usage.completion_tokens)
    assert len(await captures(server, caller.account_id)) == 1
    [row] = await log_rows(server, caller.account_id)
    assert row["route"] == "second" and row["status"] == "succeeded"


# --------------------------------------------------------------------------- streams cut short


async def test_client_disconnect_mid_stream_stops_upstream_and_charges_what_was_produced(
        server: LiveServer, fakes: tuple[FakeOpenAIChat, ...]) -> None:
    primary = fakes[0]
    primary.configure(stall_after=3)  # role chunk + two words, then the upstream waits
    caller = await server.caller(credits=10)
    before = await balance(server, caller.account_id)
    body = {"model": "fake-gpt", "stream": True, "messages": [{"role": "user", "content": "Tell me a long story"}]}
    seen: list[str] = []
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
        async with client.stream("POST", "/v1/chat/completions", json=body,
                                 headers={"Authorization": f"Bearer {caller.key}"}) as response:
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    seen.append(line[6:])
                if len(seen) == 3:
                    break
    # the client hung up: the upstream stream must be closed by the gateway, without release()

    async def aborted() -> bool:
        return primary.state.streams_aborted == 1

    await wait_for(aborted, "the upstream stream was closed")

    async def settled() -> bool:
        return len(await log_rows(server, caller.account_id)) == 1

    await wait_for(settled, "the call was settled")
    produced = sum(len((json.loads(s)["choices"][0]["delta"].get("content") or "").encode()) for s in seen)
    expected = cost(estimate_input_tokens(body), estimate_tokens(produced))
    assert produced > 0
    assert before - await balance(server, caller.account_id) == expected
    [row] = await log_rows(server, caller.account_id)
    assert row["status"] == "canceled" and row["credits"] == expected
    assert await held(server, caller.account_id) == 0
    primary.release()


async def test_upstream_cut_mid_stream_ends_with_an_error_event_and_charges_what_was_produced(
        server: LiveServer, fakes: tuple[FakeOpenAIChat, ...]) -> None:
    fakes[0].configure(cut_after=4)
    caller = await server.caller(credits=10)
    before = await balance(server, caller.account_id)
    body = {"model": "fake-gpt-failover", "stream": True, "messages": [{"role": "user", "content": "Go on"}]}
    async with server.client.stream("POST", "/v1/chat/completions", json=body,
                                    headers={"Authorization": f"Bearer {caller.key}"}) as response:
        raw = (await response.aread()).decode()
    events = [e.removeprefix("data: ") for e in raw.split("\n\n") if e]
    assert events[-1] != "[DONE]"
    assert json.loads(events[-1])["error"]["code"] == "upstream_error"
    produced = sum(len((json.loads(e)["choices"][0]["delta"].get("content") or "").encode()) for e in events[:-1])
    assert fakes[1].state.received == 0  # output had reached the client: no failover after the first byte
    expected = cost(estimate_input_tokens(body), estimate_tokens(produced))
    assert before - await balance(server, caller.account_id) == expected
    [row] = await log_rows(server, caller.account_id)
    assert row["status"] == "failed" and row["credits"] == expected
    with pytest.raises(openai.APIError):  # the SDK raises on the error event
        stream = await sdk(server, caller).chat.completions.create(**body)
        async for _ in stream:
            pass


async def test_client_gone_before_a_plain_answer_costs_nothing(server: LiveServer,
                                                               fakes: tuple[FakeOpenAIChat, ...]) -> None:
    fakes[0].configure(hang_next=True)
    caller = await server.caller(credits=10)

    async def ask() -> None:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
            await client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {caller.key}"},
                              json={"model": "fake-gpt", "messages": [{"role": "user", "content": "x"}]})

    request = asyncio.create_task(ask())

    async def hanging() -> bool:
        return fakes[0].state.received == 1 and await held(server, caller.account_id) > 0

    await wait_for(hanging, "the upstream holds the request")
    request.cancel()

    async def settled() -> bool:
        return len(await log_rows(server, caller.account_id)) == 1

    await wait_for(settled, "the call was settled")
    [row] = await log_rows(server, caller.account_id)
    assert row["status"] == "canceled" and row["credits"] == 0
    assert await balance(server, caller.account_id) == 10_000_000 and await held(server, caller.account_id) == 0
    fakes[0].release()


# ------------------------------------------------------------------------------------- concurrency


async def test_parallel_streams_on_a_balance_that_covers_only_some(server: LiveServer,
                                                                   fakes: tuple[FakeOpenAIChat, ...]) -> None:
    body = {"model": "fake-gpt", "stream": True, "max_tokens": 100,
            "messages": [{"role": "user", "content": "Count"}]}
    hold = cost(estimate_input_tokens(body), 100)
    caller = await server.caller(credits=0)
    async with server.container.db.uow() as uow:  # room for exactly 5 holds, and a little more
        await uow.accounts.change(caller.account_id, balance=hold * 5 + hold // 2)
        await uow.commit()
    start = await balance(server, caller.account_id)
    fakes[0].configure(stall_after=2)  # every served stream stays open until all 20 were decided
    client = sdk(server, caller)
    refused: list[int] = []

    async def one() -> int | None:
        try:
            stream = await client.chat.completions.create(**body, stream_options={"include_usage": True})
        except openai.RateLimitError as exc:
            assert exc.code == "insufficient_quota"
            refused.append(1)
            return None
        usage = [c.usage async for c in stream if c.usage]
        return cost(usage[-1].prompt_tokens, usage[-1].completion_tokens)

    calls = [asyncio.create_task(one()) for _ in range(20)]

    async def decided() -> bool:
        return fakes[0].state.streams_started + len(refused) == 20

    await wait_for(decided, "every call was served or refused")
    async with server.container.db.uow(write=False) as uow:
        assert (await uow.accounts.credits(caller.account_id)).available >= 0
    fakes[0].release()
    served = [r for r in await asyncio.gather(*calls) if r is not None]
    assert len(served) == 5 and len(refused) == 15
    assert start - await balance(server, caller.account_id) == sum(served)
    assert await held(server, caller.account_id) == 0
    rows = await log_rows(server, caller.account_id)
    assert len(rows) == len(served) and all(r["status"] == "succeeded" for r in rows)


async def test_models_list_includes_chat_models(server: LiveServer) -> None:
    caller = await server.caller()
    ids = [m.id async for m in sdk(server, caller).models.list()]
    assert "fake-gpt" in ids and "local-echo" in ids
    public = (await server.client.get("/api/v1/models/fake-gpt")).json()
    assert public["type"] == "chat" and public["context_window"] == 128000 and public["max_output_tokens"] == MAX_OUT
    assert public["pricing"] == {"input_per_mtok": 150, "output_per_mtok": 600}
