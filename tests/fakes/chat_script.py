"""The deterministic "model" behind the chat vendor fakes, so each fake only speaks its protocol.

Given the conversation reduced to (last user text, last tool results, tools offered, forced tool),
it answers: a call of the forced (or first offered) tool when tools are on and the last turn is not
a tool result; ``Tool said: ...`` after tool results; otherwise ``Echo: <last user text>``. One
whitespace-separated word is one output token, so ``max_tokens`` and stop sequences cut at known
places; input tokens are ⌈request bytes / 4⌉.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_PIECES = re.compile(r"\S+\s*|\s+")


@dataclass(frozen=True, slots=True)
class ToolUse:
    name: str
    input: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Reply:
    pieces: tuple[str, ...]
    """Text pieces, one token each (empty for a tool call)."""
    tool: ToolUse | None
    stop: str
    """``end``, ``max_tokens``, ``stop_sequence`` or ``tool``."""
    stop_sequence: str | None = None

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def input_tokens(raw_body_bytes: int) -> int:
    return max(1, -(-raw_body_bytes // 4))


def tool_output_tokens(tool: ToolUse, arguments_json: str) -> int:
    return max(1, -(-(len(tool.name) + len(arguments_json)) // 4))


def sample_input(schema: Any) -> dict[str, Any]:
    """Arguments that satisfy a JSON Schema's required properties (by type)."""
    if not isinstance(schema, dict):
        return {}
    props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    required = schema.get("required") if isinstance(schema.get("required"), list) else list(props)[:1]
    out: dict[str, Any] = {}
    for name in required:
        prop = props.get(name) if isinstance(props, dict) else None
        kind = str((prop or {}).get("type", "string")).lower()
        enum = (prop or {}).get("enum")
        if isinstance(enum, list) and enum:
            out[name] = enum[0]
        elif kind in ("integer", "number"):
            out[name] = 42
        elif kind == "boolean":
            out[name] = True
        elif kind == "array":
            out[name] = []
        elif kind == "object":
            out[name] = {}
        else:
            out[name] = "Paris"
    return out


def reply_for(*, last_user_text: str, tool_results: list[str], tools: list[tuple[str, Any]],
              forced_tool: str | None, tools_allowed: bool, max_tokens: int | None,
              stop_sequences: list[str], canned: str | None = None) -> Reply:
    if tools and tools_allowed and not tool_results:
        name = forced_tool or tools[0][0]
        schema = next((s for n, s in tools if n == name), {})
        return Reply(pieces=(), tool=ToolUse(name, sample_input(schema)), stop="tool")
    if canned is not None:
        text = canned
    elif tool_results:
        text = "Tool said: " + " | ".join(tool_results)
    else:
        text = "Echo: " + (last_user_text or "(nothing)")
    stop, matched = "end", None
    for seq in stop_sequences:
        at = text.find(seq)
        if seq and at >= 0 and (matched is None or at < text.find(matched)):
            matched = seq
    if matched is not None:
        text, stop = text[: text.find(matched)], "stop_sequence"
    pieces = tuple(_PIECES.findall(text))
    if max_tokens is not None and len(pieces) > max_tokens:
        return Reply(pieces=pieces[:max_tokens], tool=None, stop="max_tokens")
    return Reply(pieces=pieces, tool=None, stop=stop, stop_sequence=matched)
