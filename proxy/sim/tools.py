"""The simulated teacher's tool calls: an agent's step answered from a table.

`tool_answers` maps a user's text to what the teacher does for it: calls
(`{"tool_calls": [{"name": ..., "arguments": {...}}]}`) or a reply (`{"content": ...}`).
A request that forces a tool (`tool_choice`) gets that tool, with the table's
arguments when the table calls it. Texts not in the table get a fixed reply.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any

from starlette.responses import JSONResponse, Response, StreamingResponse

UNKNOWN_REPLY = "Sorry, I can't help with that."


def forced_tool(body: Mapping[str, Any]) -> str | None:
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        function = choice.get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            return str(function["name"])
    return None


def tool_message(table: Mapping[str, Any], body: Mapping[str, Any], text: str) -> dict[str, Any]:
    """The assistant message for a request that offers tools."""
    entry = table.get(text) or {"content": UNKNOWN_REPLY}
    calls = list(entry.get("tool_calls") or [])
    forced = forced_tool(body)
    if forced is not None:
        known = next((c for c in calls if c["name"] == forced), None)
        calls = [{"name": forced, "arguments": known["arguments"] if known else {}}]
    if not calls:
        return {"role": "assistant", "content": str(entry.get("content") or UNKNOWN_REPLY)}
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": f"call_{uuid.uuid4().hex[:24]}",
                "type": "function",
                "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])},
            }
            for c in calls
        ],
    }


def tool_events(message: Mapping[str, Any], chunk_chars: int = 8) -> Iterator[dict[str, Any]]:
    """The deltas of a streamed tool-call message, as OpenAI sends them."""
    for i, call in enumerate(message.get("tool_calls") or []):
        opening = {"index": i, "id": call["id"], "type": "function",
                   "function": {"name": call["function"]["name"], "arguments": ""}}  # fmt: skip
        yield {"role": "assistant", "content": None, "tool_calls": [opening]}
        arguments = call["function"]["arguments"]
        for start in range(0, len(arguments), max(1, chunk_chars)):
            piece = arguments[start : start + chunk_chars]
            yield {"tool_calls": [{"index": i, "function": {"arguments": piece}}]}


def _choice(finish: str | None, **body: Any) -> dict[str, Any]:
    return {"index": 0, **body, "logprobs": None, "finish_reason": finish}


async def tool_response(
    table: Mapping[str, Any],
    body: Mapping[str, Any],
    text: str,
    head: Mapping[str, Any],
    usage: Mapping[str, int],
    delay: Callable[[], Awaitable[None]],
) -> Response:
    """An agent's step, plain or streamed. The tool schemas count towards the prompt, as
    they do for a real model (so narrowing a request shows in its usage)."""
    message = tool_message(table, body, text)
    schemas = len(json.dumps(body["tools"])) // 4
    usage = {**usage, "prompt_tokens": usage["prompt_tokens"] + schemas}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    finish = "tool_calls" if message.get("tool_calls") else "stop"
    if not body.get("stream"):
        await delay()
        completion = {**head, "object": "chat.completion", "usage": usage,
                      "choices": [_choice(finish, message=message)]}  # fmt: skip
        return JSONResponse(completion)
    if message.get("tool_calls"):
        deltas = list(tool_events(message))
    else:
        deltas = [{"role": "assistant", "content": message["content"]}]

    async def events() -> AsyncIterator[str]:
        await delay()
        for delta in [*deltas, {}]:
            last = not delta
            choices = [_choice(finish if last else None, delta=delta)]
            chunk = {**head, "object": "chat.completion.chunk", "choices": choices}
            yield f"data: {json.dumps(chunk)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")
