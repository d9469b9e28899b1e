"""Server-Sent Events as upstreams send them: ``event:`` / ``data:`` lines, a blank line ends an event.

Shared by the chat adapters of every protocol (OpenAI, Anthropic, Gemini all stream SSE); each
adapter reads the event names and JSON payloads in its own folder.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    event: str
    data: str


async def read_events(lines: AsyncIterator[str]) -> AsyncIterator[ServerSentEvent]:
    """Parse the lines of a ``text/event-stream`` body (``httpx.Response.aiter_lines()``).

    Comments (``:``) and ``id:`` / ``retry:`` fields are skipped; multi-line ``data`` is joined
    with newlines as the SSE spec says. An event without data is not yielded."""
    event = ""
    data: list[str] = []
    async for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data:
                yield ServerSentEvent(event or "message", "\n".join(data))
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
    if data:
        yield ServerSentEvent(event or "message", "\n".join(data))
