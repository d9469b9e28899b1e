"""The vendors' own SDKs against our fakes of their APIs: if the official client parses the fake's
answers, streams and errors, the fake speaks the protocol our adapters are tested against."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from tests.fakes.fake_anthropic import FakeAnthropic
from tests.fakes.fake_gemini import FakeGemini


@pytest.fixture
def fake_anthropic() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as fake:
        yield fake


@pytest.fixture
def fake_gemini() -> Iterator[FakeGemini]:
    with FakeGemini() as fake:
        yield fake


def anthropic_client(fake: FakeAnthropic, key: str | None = None) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key=key or fake.api_key, base_url=fake.base_url, max_retries=0)


def test_anthropic_sdk_create_stream_tools(fake_anthropic: FakeAnthropic) -> None:
    client = anthropic_client(fake_anthropic)
    message = client.messages.create(model="claude-sonnet-4-5", max_tokens=64, system="Be brief.",
                                     messages=[{"role": "user", "content": "hello fake"}])
    assert message.content[0].type == "text" and message.content[0].text == "Echo: hello fake"
    assert message.stop_reason == "end_turn" and message.usage.output_tokens == 3
    assert fake_anthropic.requests[-1].headers["anthropic-version"] == anthropic._constants.ANTHROPIC_API_VERSION

    with client.messages.stream(model="claude-sonnet-4-5", max_tokens=64,
                                messages=[{"role": "user", "content": "stream it"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Echo: stream it" and final.usage.output_tokens == 3 and final.stop_reason == "end_turn"

    tools: list[anthropic.types.ToolParam] = [{"name": "get_weather", "description": "Weather", "input_schema": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
    with client.messages.stream(model="claude-sonnet-4-5", max_tokens=64, tools=tools,
                                tool_choice={"type": "any"},
                                messages=[{"role": "user", "content": "weather?"}]) as stream:
        called = stream.get_final_message()
    (use,) = [b for b in called.content if b.type == "tool_use"]
    assert use.name == "get_weather" and use.input == {"city": "Paris"} and called.stop_reason == "tool_use"
    answer = client.messages.create(model="claude-sonnet-4-5", max_tokens=64, tools=tools, messages=[
        {"role": "user", "content": "weather?"}, {"role": "assistant", "content": called.content},  # type: ignore[typeddict-item]
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}]}])
    assert answer.content[0].type == "text" and answer.content[0].text == "Tool said: sunny"


def test_anthropic_sdk_errors(fake_anthropic: FakeAnthropic) -> None:
    client = anthropic_client(fake_anthropic)
    with pytest.raises(anthropic.AuthenticationError):
        anthropic_client(fake_anthropic, key="wrong").messages.create(
            model="claude-sonnet-4-5", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=[
            {"role": "user", "content": "x"}, {"role": "user", "content": "y"}])
    assert "alternate" in str(bad.value)
    fake_anthropic.fail_next(529)
    with pytest.raises(anthropic.APIStatusError) as overloaded:
        client.messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    assert overloaded.value.status_code == 529
    fake_anthropic.cut_next(after_events=3, error={"type": "overloaded_error", "message": "Overloaded"})
    with pytest.raises(anthropic.APIStatusError), client.messages.stream(
            model="claude-sonnet-4-5", max_tokens=8, messages=[{"role": "user", "content": "x y z"}]) as stream:
        "".join(stream.text_stream)


def gemini_client(fake: FakeGemini) -> genai.Client:
    return genai.Client(api_key=fake.api_key, http_options=genai_types.HttpOptions(base_url=fake.base_url))


def test_google_genai_sdk_generate_stream_functions(fake_gemini: FakeGemini) -> None:
    client = gemini_client(fake_gemini)
    config = genai_types.GenerateContentConfig(system_instruction="Be brief.", max_output_tokens=64,
                                               temperature=0.2, stop_sequences=["STOPHERE"])
    response = client.models.generate_content(model="gemini-2.5-flash", contents="hello gemini", config=config)
    assert response.text == "Echo: hello gemini"
    assert response.usage_metadata is not None and response.usage_metadata.candidates_token_count == 3
    assert fake_gemini.requests[-1].headers["x-goog-api-key"] == fake_gemini.api_key

    pieces = [chunk.text or "" for chunk in client.models.generate_content_stream(
        model="gemini-2.5-flash", contents="stream this now", config=config)]
    assert len(pieces) > 1 and "".join(pieces) == "Echo: stream this now"
    assert fake_gemini.requests[-1].query.get("alt") == "sse"

    declaration = genai_types.FunctionDeclaration(name="get_weather", description="Weather", parameters=
                                                  genai_types.Schema(type=genai_types.Type.OBJECT, properties={
                                                      "city": genai_types.Schema(type=genai_types.Type.STRING)},
                                                      required=["city"]))
    tool_config = genai_types.GenerateContentConfig(
        tools=[genai_types.Tool(function_declarations=[declaration])],
        tool_config=genai_types.ToolConfig(function_calling_config=genai_types.FunctionCallingConfig(mode="ANY")),
        automatic_function_calling=genai_types.AutomaticFunctionCallingConfig(disable=True))
    called = client.models.generate_content(model="gemini-2.5-flash", contents="weather?", config=tool_config)
    assert called.function_calls is not None
    (call,) = called.function_calls
    assert call.name == "get_weather" and call.args == {"city": "Paris"}


def test_google_genai_sdk_errors(fake_gemini: FakeGemini) -> None:
    client = gemini_client(fake_gemini)
    fake_gemini.fail_next(503)
    with pytest.raises(genai_errors.ServerError) as server:
        client.models.generate_content(model="gemini-2.5-flash", contents="x")
    assert server.value.code == 503
    wrong = genai.Client(api_key="wrong", http_options=genai_types.HttpOptions(base_url=fake_gemini.base_url))
    with pytest.raises(genai_errors.ClientError) as bad_key:
        wrong.models.generate_content(model="gemini-2.5-flash", contents="x")
    assert bad_key.value.code == 400 and "API key not valid" in str(bad_key.value)
