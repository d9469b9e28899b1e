"""A protocol-faithful fake of OpenAI's Chat Completions API (``POST /v1/chat/completions``), served
over real HTTP on loopback, like :mod:`tests.fakes.fake_openai` for images.

Shapes follow OpenAI's API reference: a ``chat.completion`` object with ``usage`` (and its
``prompt_tokens_details`` / ``completion_tokens_details``); with ``stream: true`` SSE
``chat.completion.chunk`` events — a first chunk with ``delta.role``, content deltas, tool calls
as a first delta with ``id`` / ``type`` / ``function.name`` and ``arguments: ""`` followed by
argument fragments, a last choice chunk with ``finish_reason``, then, with
``stream_options.include_usage``, a chunk with ``"choices": []`` and ``usage`` (every other chunk
then carries ``"usage": null``), and ``data: [DONE]``. Errors are OpenAI's envelope
``{"error": {"message", "type", "param", "code"}}``: 401 ``invalid_api_key``, 429
``rate_limit_exceeded`` with ``retry-after``, 500 ``server_error``, 400 ``invalid_request_error``.

Reported usage is deliberately not the gateway's ⌈bytes/4⌉ estimate (``prompt_tokens`` = 7 per
message + 3, ``completion_tokens`` = one per streamed content piece), so tests can tell reported
usage from an estimate. Steered at run time: ``fail_next(status, ...)``, ``latency_ms`` (before
the first byte), ``chunk_delay_ms``, ``cut_after`` (drop the connection after N chunks, no
``[DONE]``), ``stall_after`` (stop after N chunks until ``release()``), ``hang_next`` (the next
request waits for ``release()`` before answering), ``reply`` (the text answered).
Counters: ``received``, ``streams_started``, ``streams_finished``, ``streams_aborted`` (the client
closed the connection before the stream ended).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

DEFAULT_API_KEY = "sk-test-fake-openai-chat-key"
DEFAULT_REPLY = "Hello from the fake OpenAI chat upstream, answering your question."
KNOWN_PARAMS = frozenset({
    "model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens", "temperature",
    "top_p", "stop", "tools", "tool_choice", "response_format", "seed", "user", "n", "frequency_penalty",
    "presence_penalty", "parallel_tool_calls", "logit_bias", "logprobs", "top_logprobs", "metadata", "store",
    "service_tier", "modalities", "audio", "prediction", "reasoning_effort", "web_search_options",
})


def openai_error(message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


DEFAULT_ERRORS: dict[int, dict[str, Any]] = {
    400: openai_error("Invalid request.", param=None, code=None),
    401: openai_error("Incorrect API key provided: sk-***. You can find your API key at "
                      "https://platform.openai.com/account/api-keys.", code="invalid_api_key"),
    429: openai_error("Rate limit reached for requests. Please try again in 1ms.", type_="requests",
                      code="rate_limit_exceeded"),
    500: openai_error("The server had an error while processing your request. Sorry about that!",
                      type_="server_error"),
    503: openai_error("The engine is currently overloaded, please try again later.", type_="server_error"),
}


@dataclass
class Failure:
    status: int
    body: dict[str, Any] | None
    headers: dict[str, str]


@dataclass
class Recorded:
    headers: dict[str, str]
    json: Any


@dataclass
class ChatFakeState:
    api_key: str | None = DEFAULT_API_KEY
    reply: str = DEFAULT_REPLY
    latency_s: float = 0.0
    chunk_delay_s: float = 0.0
    cut_after: int | None = None
    stall_after: int | None = None
    hang_next: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    released: threading.Event = field(default_factory=threading.Event)
    failures: deque[Failure] = field(default_factory=deque)
    recorded: deque[Recorded] = field(default_factory=lambda: deque(maxlen=1000))
    received: int = 0
    streams_started: int = 0
    streams_finished: int = 0
    streams_aborted: int = 0

    def count(self, name: str) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + 1)


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, headers=headers, media_type="application/json")


async def _wait_released(state: ChatFakeState) -> None:
    while not state.released.is_set():
        await asyncio.sleep(0.005)


def _validate(body: Any) -> dict[str, Any] | None:
    """OpenAI's 400s for the mistakes a gateway could make (the fake is strict on purpose)."""
    if not isinstance(body, dict):
        return openai_error("We could not parse the JSON body of your request.")
    for name in body:
        if name not in KNOWN_PARAMS:
            return openai_error(f"Unrecognized request argument supplied: {name}")
    if not isinstance(body.get("model"), str):
        return openai_error("you must provide a model parameter")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return openai_error("Missing required parameter: 'messages'.", param="messages",
                            code="missing_required_parameter")
    if body.get("max_tokens") is not None and body.get("max_completion_tokens") is not None:
        return openai_error("max_tokens and max_completion_tokens cannot both be set", param="max_tokens")
    if body.get("stream_options") is not None and not body.get("stream"):
        return openai_error("The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                            param="stream_options", code="invalid_value")
    return None


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}


def _plan(state: ChatFakeState, body: dict[str, Any]) -> tuple[list[str], dict[str, Any] | None]:
    """The content pieces and, when tools are offered and allowed, the one tool call to make."""
    tools = body.get("tools") or []
    choice = body.get("tool_choice")
    last = body["messages"][-1]
    if tools and choice != "none" and last.get("role") == "user":
        name = choice["function"]["name"] if isinstance(choice, dict) else tools[0]["function"]["name"]
        call = {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                "function": {"name": name, "arguments": '{"location": "Paris, France", "unit": "celsius"}'}}
        return [], call
    words = state.reply.split(" ")
    return [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)], None


def build_app(state: ChatFakeState) -> Starlette:
    async def completions(request: Request) -> Response:
        raw = await request.body()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        with state.lock:
            state.received += 1
            state.recorded.append(Recorded(dict(request.headers), body))
            failure = state.failures.popleft() if state.failures else None
            hang, state.hang_next = state.hang_next, False
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or (state.api_key is not None and auth[7:] != state.api_key):
            return _json(DEFAULT_ERRORS[401], 401)
        if hang:
            await _wait_released(state)
        if state.latency_s:
            await asyncio.sleep(state.latency_s)
        if failure is not None:
            return _json(failure.body or DEFAULT_ERRORS.get(failure.status, openai_error(f"HTTP {failure.status}")),
                         failure.status, failure.headers)
        invalid = _validate(body)
        if invalid is not None:
            return _json(invalid, 400)
        assert isinstance(body, dict)
        pieces, call = _plan(state, body)
        prompt_tokens = 7 * len(body["messages"]) + 3
        ident, created, model = f"chatcmpl-{uuid.uuid4().hex[:29]}", int(time.time()), body["model"]
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": "".join(pieces) if call is None else None,
                                       "refusal": None, "annotations": []}
            if call is not None:
                message["tool_calls"] = [call]
            completion_tokens = len(pieces) if call is None else 12
            return _json({"id": ident, "object": "chat.completion", "created": created, "model": model,
                          "choices": [{"index": 0, "message": message, "logprobs": None,
                                       "finish_reason": "stop" if call is None else "tool_calls"}],
                          "usage": _usage(prompt_tokens, completion_tokens), "service_tier": "default",
                          "system_fingerprint": "fp_fake0001"})
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return StreamingResponse(_stream(state, ident, created, model, pieces, call, prompt_tokens, include_usage),
                                 media_type="text/event-stream")

    async def ctl(request: Request) -> Response:
        spec = orjson.loads(await request.body() or b"{}")
        action = request.path_params["action"]
        with state.lock:
            if action == "fail_next":
                for _ in range(int(spec.get("count", 1))):
                    state.failures.append(Failure(int(spec["status"]), spec.get("body"), dict(spec.get("headers") or {})))
            elif action == "config":
                for key in ("reply", "cut_after", "stall_after", "hang_next", "api_key"):
                    if key in spec:
                        setattr(state, key, spec[key])
                if "latency_ms" in spec:
                    state.latency_s = float(spec["latency_ms"]) / 1000
                if "chunk_delay_ms" in spec:
                    state.chunk_delay_s = float(spec["chunk_delay_ms"]) / 1000
            elif action == "release":
                state.released.set()
        return _json({"received": state.received, "streams_started": state.streams_started,
                      "streams_finished": state.streams_finished, "streams_aborted": state.streams_aborted})

    async def not_found(request: Request, exc: Exception) -> Response:
        return _json(openai_error(f"Invalid URL ({request.method} {request.url.path})"), 404)

    return Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"]),
                             Route("/_fake/{action}", ctl, methods=["POST", "GET"])],
                     exception_handlers={404: not_found, 405: not_found})


async def _stream(state: ChatFakeState, ident: str, created: int, model: str, pieces: list[str],
                  call: dict[str, Any] | None, prompt_tokens: int, include_usage: bool) -> Any:
    head: dict[str, Any] = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                            "service_tier": "default", "system_fingerprint": "fp_fake0001"}

    def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
        data = {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if include_usage:
            data["usage"] = None
        return b"data: " + orjson.dumps(data) + b"\n\n"

    events = [event({"role": "assistant", "content": "", "refusal": None})]
    if call is not None:
        args = call["function"]["arguments"]
        events.append(event({"tool_calls": [{"index": 0, "id": call["id"], "type": "function",
                                             "function": {"name": call["function"]["name"], "arguments": ""}}]}))
        events += [event({"tool_calls": [{"index": 0, "function": {"arguments": args[i:i + 8]}}]})
                   for i in range(0, len(args), 8)]
        completion_tokens = 12
    else:
        events += [event({"content": piece}) for piece in pieces]
        completion_tokens = len(pieces)
    events.append(event({}, "stop" if call is None else "tool_calls"))
    if include_usage:
        events.append(b"data: " + orjson.dumps({**head, "choices": [],
                                                "usage": _usage(prompt_tokens, completion_tokens)}) + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    state.count("streams_started")
    finished = False
    try:
        for i, frame in enumerate(events):
            if state.cut_after is not None and i >= state.cut_after:
                raise ConnectionAbortedError("fake: stream cut on purpose")
            if state.stall_after is not None and i >= state.stall_after:
                await _wait_released(state)
            if i and state.chunk_delay_s:
                await asyncio.sleep(state.chunk_delay_s)
            yield frame
        finished = True
    finally:
        state.count("streams_finished" if finished else "streams_aborted")


def _bind_loopback() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    return sock


class FakeOpenAIChat:
    """The fake in a background thread: ``with FakeOpenAIChat() as fake: fake.base_url ...``."""

    def __init__(self, *, api_key: str | None = DEFAULT_API_KEY, reply: str = DEFAULT_REPLY) -> None:
        self.state = ChatFakeState(api_key=api_key, reply=reply)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    def start(self) -> FakeOpenAIChat:
        sock = _bind_loopback()
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(build_app(self.state), log_level="warning", access_log=False, lifespan="off",
                                loop="asyncio", timeout_keep_alive=30)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True,
                                        name=f"fake-openai-chat-{self.port}")
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("fake OpenAI chat server did not start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        self.state.released.set()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> FakeOpenAIChat:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    @property
    def api_key(self) -> str:
        return self.state.api_key or DEFAULT_API_KEY

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def requests(self) -> list[Recorded]:
        with self.state.lock:
            return list(self.state.recorded)

    def fail_next(self, status: int, *, count: int = 1, body: dict[str, Any] | None = None,
                  headers: dict[str, str] | None = None) -> None:
        with self.state.lock:
            for _ in range(count):
                self.state.failures.append(Failure(status, body, dict(headers or {})))

    def configure(self, **values: Any) -> None:
        with self.state.lock:
            for key, value in values.items():
                if key == "latency_ms":
                    self.state.latency_s = value / 1000
                elif key == "chunk_delay_ms":
                    self.state.chunk_delay_s = value / 1000
                else:
                    setattr(self.state, key, value)
            self.state.released.clear()

    def release(self) -> None:
        self.state.released.set()


def main() -> None:  # pragma: no cover - the benchmark runs it as a process
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(description="fake OpenAI Chat Completions server on loopback")
    parser.add_argument("--port-file", type=Path, required=True)
    parser.add_argument("--any-key", action="store_true")
    args = parser.parse_args()
    state = ChatFakeState(api_key=None if args.any_key else DEFAULT_API_KEY)
    sock = _bind_loopback()
    server = uvicorn.Server(uvicorn.Config(build_app(state), log_level="warning", access_log=False,
                                           lifespan="off", timeout_keep_alive=30))
    args.port_file.write_text(str(sock.getsockname()[1]))
    server.run(sockets=[sock])


if __name__ == "__main__":  # pragma: no cover
    main()
