"""Answers the surrogate gives: chat completions (JSON or SSE) in the teacher's own words.

A handled answer's content is the teacher's canonical answer for the predicted label,
byte for byte as the artifact keeps it; usage is zero tokens, since no model was
billed; `model` is what the teacher's own answers carry, so a client sees the same
field whoever answered.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

from starlette.responses import Response, StreamingResponse

from router.chat import render_label, synthesize_completion, synthesize_stream
from router.tools import tool_completion, tool_stream

from .config import TaskConfig
from .models import LiveModel
from .routing import Route

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def answer_text(task: TaskConfig, live: LiveModel, label: str) -> str:
    """What the teacher would have written for `label`: its most frequent raw answer (for
    a tool task's reply without a call, its one constant text)."""
    tools = live.router.tools
    if task.kind == "tools" and tools is not None and tools.message_text is not None:
        return tools.message_text
    answers = live.router.manifest.answers
    if label in answers:
        return answers[label]
    return render_label(label, task.output.format, task.output.field)  # an older artifact


def _wants_usage(body: Mapping[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


def completion(content: str, model: str, route: Route, body: Mapping[str, Any]) -> Response:
    """The handled answer as the client asked for it: JSON, or a proper SSE stream."""
    extra = {"tracer": route.body_field()}
    headers = route.headers()
    if body.get("stream"):
        return _sse(synthesize_stream(content, model, _wants_usage(body), extra), headers)
    return Response(
        json.dumps(synthesize_completion(content, model, extra)),
        media_type="application/json",
        headers=headers,
    )


def tool_call(
    name: str, arguments: Mapping[str, Any], model: str, route: Route, body: Mapping[str, Any]
) -> Response:
    """A whole tool call, as OpenAI's `message.tool_calls`, plain or streamed."""
    extra = {"tracer": route.body_field()}
    headers = route.headers()
    if body.get("stream"):
        return _sse(tool_stream(name, arguments, model, _wants_usage(body), extra), headers)
    return Response(
        json.dumps(tool_completion(name, arguments, model, extra)),
        media_type="application/json",
        headers=headers,
    )


def _sse(events: Iterable[str], headers: Mapping[str, str]) -> StreamingResponse:
    encoded = [e.encode() for e in events]
    return StreamingResponse(
        _replay(encoded), media_type="text/event-stream", headers={**SSE_HEADERS, **headers}
    )


async def _replay(items: list[bytes]) -> AsyncIterator[bytes]:
    for item in items:
        yield item
