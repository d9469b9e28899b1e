"""``POST /v1/messages`` end to end: the official ``anthropic`` SDK (create, stream, tool use) against
a real server in front of the fake Anthropic upstream, the fake Gemini upstream, the fake OpenAI
chat upstream and the embedded local-echo model; Anthropic's error shapes; the money to the µcr."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anthropic
import orjson
import pytest
from sqlalchemy import select

from apiinone.db import tables as t
from apiinone.kinds.chat import estimate_input_tokens, estimate_tokens
from tests.conftest import Caller
from tests.fakes.fake_anthropic import FakeAnthropic
from tests.fakes.fake_gemini import FakeGemini
from tests.fakes.fake_openai_chat import DEFAULT_REPLY, FakeOpenAIChat
from tests.integration.live_server import LiveServer

IN_UCR, OUT_UCR = 150, 600  # µcr per token (150 / 600 credits per million tokens)
TOOLS: list[anthropic.types.ToolParam] = [{"name": "get_weather", "description": "Weather of a city", "input_schema": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]

MODEL = """
[[models]]
id = "{id}"
name = "{id}"
type = "chat"
provider = "{provider}"
upstream_model = "{upstream}"
pricing = {{ input_per_mtok = 150, output_per_mtok = 600 }}
context_window = 200000
max_output_tokens = 1000
[[models.routes]]
name = "main"
provider = "{provider}"
base_url = "{url}"
api_key_env = "{key_env}"
"""
BACKUP_ROUTE = """
[[models.routes]]
name = "gemini-backup"
provider = "gemini"
base_url = "{url}/v1beta"
upstream_model = "gemini-2.5-flash"
api_key_env = "FAKE_GEMINI_KEY"
priority = 1
"""


@pytest.fixture
def fakes() -> Iterator[tuple[FakeAnthropic, FakeGemini, FakeOpenAIChat]]:
    with FakeAnthropic() as claude, FakeGemini() as gemini, FakeOpenAIChat() as gpt:
        yield claude, gemini, gpt


@pytest.fixture
async def server(tmp_path: Path, sqlite_url: str, fakes: tuple[FakeAnthropic, FakeGemini, FakeOpenAIChat],
                 monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[LiveServer]:
    async with live_server(tmp_path, sqlite_url, fakes, monkeypatch) as live:
        yield live


@contextlib.asynccontextmanager
async def live_server(tmp_path: Path, url: str, fakes: tuple[FakeAnthropic, FakeGemini, FakeOpenAIChat],
                      monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[LiveServer]:
    """A real server whose catalog has one chat model per fake upstream, and one with no key."""
    claude, gemini, gpt = fakes
    monkeypatch.setenv("FAKE_ANTHROPIC_KEY", claude.api_key)
    monkeypatch.setenv("FAKE_GEMINI_KEY", gemini.api_key)
    monkeypatch.setenv("FAKE_CHAT_KEY", gpt.api_key)
    monkeypatch.delenv("UNSET_KEY", raising=False)
    monkeypatch.setenv("ROTATING_KEYS", f"sk-ant-refused-0000,{claude.api_key}")
    models = tmp_path / "models.toml"
    models.write_text(
        MODEL.format(id="claude-fake", provider="anthropic", upstream="claude-sonnet-4-5", url=claude.base_url,
                     key_env="FAKE_ANTHROPIC_KEY")
        + MODEL.format(id="gemini-fake", provider="gemini", upstream="gemini-2.5-flash", url=gemini.base_url,
                       key_env="FAKE_GEMINI_KEY")
        + MODEL.format(id="gpt-fake", provider="openai", upstream="gpt-4o-mini", url=gpt.base_url,
                       key_env="FAKE_CHAT_KEY")
        + MODEL.format(id="claude-keyless", provider="anthropic", upstream="claude-sonnet-4-5",
                       url=claude.base_url, key_env="UNSET_KEY")
        + MODEL.format(id="claude-rotating", provider="anthropic", upstream="claude-sonnet-4-5",
                       url=claude.base_url, key_env="ROTATING_KEYS")
        + MODEL.format(id="claude-then-gemini", provider="anthropic", upstream="claude-sonnet-4-5",
                       url=claude.base_url, key_env="FAKE_ANTHROPIC_KEY")
        + BACKUP_ROUTE.format(url=gemini.base_url))
    async with LiveServer(tmp_path, url, embedded_worker=False, models_file=models, route_backoff_s=0.0) as live:
        yield live


def client(live: LiveServer, caller: Caller) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key=caller.key, base_url=live.base_url, max_retries=0)


async def balance(live: LiveServer, account_id: str) -> int:
    async with live.container.db.uow(write=False) as uow:
        credits = await uow.accounts.credits(account_id)
    assert credits.available >= 0
    return credits.balance


async def log_rows(live: LiveServer, account_id: str) -> list[Any]:
    async with live.container.db.uow(write=False) as uow:
        rows = (await uow.conn.execute(select(t.request_log).where(t.request_log.c.account_id == account_id)
                                       .order_by(t.request_log.c.id))).mappings().all()
    return list(rows)


def charge_of(usage: anthropic.types.Usage, prices: tuple[int, int] = (IN_UCR, OUT_UCR)) -> int:
    prompt = usage.input_tokens + (usage.cache_read_input_tokens or 0) + (usage.cache_creation_input_tokens or 0)
    return prompt * prices[0] + usage.output_tokens * prices[1]


# --------------------------------------------------------------------------------- the SDK


async def test_sdk_create_and_stream_in_front_of_anthropic(tmp_path: Path, database_url: str,
                                                           fakes: tuple[FakeAnthropic, FakeGemini, FakeOpenAIChat],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    claude = fakes[0]
    claude.set_cache_read_tokens(5)
    async with live_server(tmp_path, database_url, fakes, monkeypatch) as live:
        caller = await live.caller(credits=10)
        before = await balance(live, caller.account_id)

        def create() -> anthropic.types.Message:
            return client(live, caller).messages.create(
                model="claude-fake", max_tokens=100, system="Be brief.", stop_sequences=["NEVER"],
                messages=[{"role": "user", "content": "hello through the gateway"}])

        message = await asyncio.to_thread(create)
        assert message.type == "message" and message.role == "assistant" and message.model == "claude-fake"
        assert message.content[0].type == "text" and message.content[0].text == "Echo: hello through the gateway"
        assert message.stop_reason == "end_turn"
        upstream = claude.requests[-1].json
        assert upstream["model"] == "claude-sonnet-4-5" and upstream["system"] == "Be brief."
        assert upstream["max_tokens"] == 100 and upstream["stop_sequences"] == ["NEVER"]
        assert message.usage.output_tokens == 5 and message.usage.cache_read_input_tokens == 5
        after_create = await balance(live, caller.account_id)
        assert before - after_create == charge_of(message.usage)

        def stream() -> tuple[str, anthropic.types.Message, list[str]]:
            with client(live, caller).messages.stream(
                    model="claude-fake", max_tokens=100,
                    messages=[{"role": "user", "content": "stream through the gateway"}]) as events:
                names: list[str] = []
                text = ""
                for event in events:
                    names.append(event.type)
                    if event.type == "text":
                        text += event.text
                return text, events.get_final_message(), names

        text, final, names = await asyncio.to_thread(stream)
        assert text == "Echo: stream through the gateway"
        assert names[0] == "message_start" and names[-1] == "message_stop"
        assert final.usage.output_tokens == 5 and final.stop_reason == "end_turn"
        assert after_create - await balance(live, caller.account_id) == charge_of(final.usage)
        rows = await log_rows(live, caller.account_id)
        assert [(r["status"], r["http_status"]) for r in rows] == [("succeeded", 200), ("succeeded", 200)]
        assert rows[1]["ttft_ms"] is not None


async def test_sdk_tool_use_round_trip(server: LiveServer, fakes: tuple[FakeAnthropic, ...]) -> None:
    caller = await server.caller(credits=10)

    def loop() -> tuple[anthropic.types.Message, anthropic.types.Message]:
        sdk = client(server, caller)
        with sdk.messages.stream(model="claude-fake", max_tokens=100, tools=TOOLS, tool_choice={"type": "any"},
                                 messages=[{"role": "user", "content": "weather in Paris?"}]) as events:
            called = events.get_final_message()
        use = next(b for b in called.content if b.type == "tool_use")
        answer = sdk.messages.create(model="claude-fake", max_tokens=100, tools=TOOLS, messages=[
            {"role": "user", "content": "weather in Paris?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": use.id, "name": use.name,
                                               "input": use.input}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}]}])
        return called, answer

    called, answer = await asyncio.to_thread(loop)
    use = next(b for b in called.content if b.type == "tool_use")
    assert called.stop_reason == "tool_use" and use.name == "get_weather" and use.input == {"city": "Paris"}
    assert answer.content[0].type == "text" and answer.content[0].text == "Tool said: sunny"
    sent = fakes[0].requests[-1].json
    assert sent["messages"][1]["content"][0]["id"] == use.id  # the upstream's own tool id went back to it


@pytest.mark.parametrize(("model", "expected", "prices"), [
    ("gpt-fake", DEFAULT_REPLY, (IN_UCR, OUT_UCR)), ("gemini-fake", "Echo: hi from anthropic sdk", (IN_UCR, OUT_UCR)),
    ("local-echo", "hi from anthropic sdk", (10, 20))])  # the built-in catalog's local-echo prices
async def test_sdk_in_front_of_other_protocols(server: LiveServer, model: str, expected: str,
                                               prices: tuple[int, int]) -> None:
    caller = await server.caller(credits=10)
    before = await balance(server, caller.account_id)

    def both() -> tuple[anthropic.types.Message, str, anthropic.types.Message]:
        sdk = client(server, caller)
        created = sdk.messages.create(model=model, max_tokens=200,
                                      messages=[{"role": "user", "content": "hi from anthropic sdk"}])
        with sdk.messages.stream(model=model, max_tokens=200,
                                 messages=[{"role": "user", "content": "hi from anthropic sdk"}]) as events:
            text = "".join(events.text_stream)
            final = events.get_final_message()
        return created, text, final

    created, text, final = await asyncio.to_thread(both)
    assert created.content[0].type == "text" and created.content[0].text == expected
    assert text == expected and final.stop_reason == "end_turn" and created.stop_reason == "end_turn"
    assert created.usage.output_tokens > 0 and final.usage.output_tokens == created.usage.output_tokens
    assert before - await balance(server, caller.account_id) == charge_of(created.usage, prices) + \
        charge_of(final.usage, prices)


# ------------------------------------------------------------------------------------ errors


async def test_errors_in_anthropic_shapes(server: LiveServer, fakes: tuple[FakeAnthropic, ...]) -> None:
    claude = fakes[0]
    caller = await server.caller(credits=10)
    poor = await server.caller(credits=0)

    def calls() -> dict[str, Exception]:
        out: dict[str, Exception] = {}
        user: list[anthropic.types.MessageParam] = [{"role": "user", "content": "x"}]
        cases: dict[str, tuple[str, str, dict[str, Any]]] = {
            "auth": ("aio_not_a_key", "claude-fake", {}),
            "credits": (poor.key, "claude-fake", {}),
            "model": (caller.key, "no-such-model", {}),
            "unavailable": (caller.key, "claude-keyless", {}),
            "refused": (caller.key, "claude-fake", {}),
        }
        for name, (key, model, extra) in cases.items():
            sdk = anthropic.Anthropic(api_key=key, base_url=server.base_url, max_retries=0)
            try:
                sdk.messages.create(model=model, max_tokens=10, messages=user, **extra)
            except Exception as exc:
                out[name] = exc
        return out

    claude.fail_next(400, {"type": "error", "error": {"type": "invalid_request_error",
                                                      "message": "prompt is too long"}})
    sent_before = claude.received
    errors = await asyncio.to_thread(calls)
    assert isinstance(errors["auth"], anthropic.AuthenticationError)
    assert isinstance(errors["credits"], anthropic.BadRequestError)
    assert "credit balance is too low" in errors["credits"].message
    assert isinstance(errors["model"], anthropic.NotFoundError)
    assert isinstance(errors["unavailable"], anthropic.APIStatusError)
    assert errors["unavailable"].status_code == 529
    assert isinstance(errors["refused"], anthropic.BadRequestError) and "prompt is too long" in str(errors["refused"])
    assert claude.received == sent_before + 1  # only the refused call reached the upstream
    for exc in errors.values():
        assert isinstance(exc, anthropic.APIStatusError)
        assert exc.body is not None and exc.body["type"] == "error"  # type: ignore[index]
    assert await balance(server, poor.account_id) == 0
    assert await balance(server, caller.account_id) == 10_000_000  # refused calls cost nothing


async def test_raw_requests_key_headers_and_validation(server: LiveServer) -> None:
    caller = await server.caller(credits=10)
    body = {"model": "local-echo", "max_tokens": 20, "messages": [{"role": "user", "content": "raw"}]}
    by_x_api_key = await server.client.post("/v1/messages", json=body, headers={
        "x-api-key": caller.key, "anthropic-version": "2023-06-01"})
    assert by_x_api_key.status_code == 200 and by_x_api_key.json()["content"][0]["text"] == "raw"
    by_bearer = await server.client.post("/v1/messages", json=body, headers={"Authorization": f"Bearer {caller.key}"})
    assert by_bearer.status_code == 200
    missing = await server.client.post("/v1/messages", json={k: v for k, v in body.items() if k != "max_tokens"},
                                       headers={"x-api-key": caller.key})
    assert missing.status_code == 400
    assert missing.json() == {"type": "error", "error": {"type": "invalid_request_error",
                                                         "message": "max_tokens: Field required"}}
    not_json = await server.client.post("/v1/messages", content=b"{nope", headers={"x-api-key": caller.key,
                                                                                    "content-type": "application/json"})
    assert not_json.status_code == 400 and not_json.json()["error"]["type"] == "invalid_request_error"
    no_key = await server.client.post("/v1/messages", json=body)
    assert no_key.status_code == 401 and no_key.json()["error"]["type"] == "authentication_error"
    image = await server.client.post("/v1/messages", headers={"x-api-key": caller.key}, json={
        **body, "messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "base64",
                                                                                       "media_type": "image/tiff",
                                                                                       "data": "AAAA"}}]}]})
    assert image.status_code == 400 and "media_type" in image.json()["error"]["message"]


async def test_upstream_cut_mid_stream_ends_with_error_event_and_partial_charge(
        server: LiveServer, fakes: tuple[FakeAnthropic, ...]) -> None:
    claude = fakes[0]
    caller = await server.caller(credits=10)
    before = await balance(server, caller.account_id)
    claude.cut_next(after_events=6)  # message_start, block start, ping, 3 text deltas

    def stream() -> tuple[str, Exception | None]:
        text = ""
        try:
            with client(server, caller).messages.stream(
                    model="claude-fake", max_tokens=100,
                    messages=[{"role": "user", "content": "one two three four five six"}]) as events:
                for piece in events.text_stream:
                    text += piece
        except anthropic.APIStatusError as exc:
            return text, exc
        return text, None

    text, error = await asyncio.to_thread(stream)
    assert error is not None and "upstream stream broke" in str(error)
    assert text == "Echo: one two "
    (row,) = await log_rows(server, caller.account_id)
    assert row["status"] == "failed"
    assert row["output_tokens"] == estimate_tokens(len(text.encode()))
    assert before - await balance(server, caller.account_id) == row["input_tokens"] * IN_UCR + \
        row["output_tokens"] * OUT_UCR


async def test_failover_across_protocols_and_key_rotation(server: LiveServer,
                                                          fakes: tuple[FakeAnthropic, FakeGemini, FakeOpenAIChat]) -> None:
    """An overloaded Anthropic route fails over to a Gemini route before the first byte; a refused
    key is set aside and the route's next key answers; the client sees one Anthropic answer."""
    claude, gemini, _ = fakes
    caller = await server.caller(credits=10)
    claude.fail_next(529)

    def ask(model: str, stream: bool) -> str:
        sdk = client(server, caller)
        user: list[anthropic.types.MessageParam] = [{"role": "user", "content": "who answers?"}]
        if stream:
            with sdk.messages.stream(model=model, max_tokens=50, messages=user) as events:
                return "".join(events.text_stream)
        block = sdk.messages.create(model=model, max_tokens=50, messages=user).content[0]
        assert block.type == "text"
        return block.text

    gemini_before = gemini.received
    assert await asyncio.to_thread(ask, "claude-then-gemini", True) == "Echo: who answers?"
    assert gemini.received == gemini_before + 1 and claude.requests[-1].status == 529
    assert await asyncio.to_thread(ask, "claude-rotating", False) == "Echo: who answers?"
    assert [r.status for r in claude.requests[-2:]] == [401, 200]
    rows = await log_rows(server, caller.account_id)
    assert [r["status"] for r in rows] == ["succeeded", "succeeded"]


async def test_count_tokens_is_the_hold_estimate_and_free(server: LiveServer,
                                                          fakes: tuple[FakeAnthropic, ...]) -> None:
    caller = await server.caller(credits=10)
    sent_before = fakes[0].received

    def count() -> int:
        return client(server, caller).messages.count_tokens(
            model="claude-fake", system="Be brief.", tools=TOOLS,
            messages=[{"role": "user", "content": "how many tokens is this?"}]).input_tokens

    counted = await asyncio.to_thread(count)
    expected = estimate_input_tokens({"messages": [{"role": "system", "content": "Be brief."},
                                                   {"role": "user", "content": "how many tokens is this?"}],
                                      "tools": [{"type": "function", "function": {
                                          "name": "get_weather", "parameters": TOOLS[0]["input_schema"],
                                          "description": "Weather of a city"}}]})
    assert counted == expected
    assert fakes[0].received == sent_before and await log_rows(server, caller.account_id) == []
    assert await balance(server, caller.account_id) == 10_000_000
    unknown = await server.client.post("/v1/messages/count_tokens", headers={"x-api-key": caller.key}, json={
        "model": "nope", "messages": [{"role": "user", "content": "x"}]})
    assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "not_found_error"


async def test_client_gone_mid_stream_stops_the_upstream_and_pays_what_was_produced(
        server: LiveServer, fakes: tuple[FakeAnthropic, ...]) -> None:
    claude = fakes[0]
    claude.set_event_delay(20)
    caller = await server.caller(credits=10)
    before = await balance(server, caller.account_id)
    words = " ".join(f"w{i}" for i in range(200))
    body = {"model": "claude-fake", "max_tokens": 500, "stream": True,
            "messages": [{"role": "user", "content": words}]}
    received = ""
    async with server.client.stream("POST", "/v1/messages", json=body, headers={"x-api-key": caller.key}) as resp:
        assert resp.status_code == 200
        async for line in resp.aiter_lines():
            if line.startswith("data: ") and '"text_delta"' in line:
                received += orjson.loads(line[6:])["delta"]["text"]
                if len(received) > 20:
                    break

    async def settled() -> bool:
        return bool(await log_rows(server, caller.account_id)) and claude.aborted_streams == 1

    for _ in range(1000):
        if await settled():
            break
        await asyncio.sleep(0.01)
    assert await settled(), "the upstream stream was not ended, or the call not settled"
    (row,) = await log_rows(server, caller.account_id)
    assert row["status"] == "canceled"
    assert 0 < row["output_tokens"] < 200  # what was produced, not the whole answer
    assert before - await balance(server, caller.account_id) == row["input_tokens"] * IN_UCR + \
        row["output_tokens"] * OUT_UCR


async def test_claude_code_style_request_is_accepted(server: LiveServer) -> None:
    """What agent tools built on the SDK send: cache_control everywhere, thinking, tool results
    with images, structured output; the canonical request passes the chat kind's strict rules."""
    caller = await server.caller(credits=10)
    png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
    body = {
        "model": "local-echo", "max_tokens": 100, "thinking": {"type": "enabled", "budget_tokens": 50},
        "system": [{"type": "text", "text": "You are a helper.", "cache_control": {"type": "ephemeral"}}],
        "tools": [{"name": "screenshot", "description": "Take one", "input_schema": {"type": "object",
                                                                                    "properties": {}},
                   "cache_control": {"type": "ephemeral"}}],
        "output_format": {"type": "json_schema", "schema": {"type": "object"}},
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "look", "cache_control": {"type": "ephemeral"}}]},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": "sig"},
                                              {"type": "tool_use", "id": "toolu_1", "name": "screenshot",
                                               "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}}]}]}],
    }
    answer = await server.client.post("/v1/messages", json=body, headers={"x-api-key": caller.key})
    assert answer.status_code == 200, answer.text
    assert answer.json()["type"] == "message" and answer.json()["content"]  # local-echo calls the tool again
