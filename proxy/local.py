"""Answers the surrogate gives: chat completions (JSON or SSE) in the teacher's own words.

A handled answer's content is the teacher's canonical answer for the predicted label,
byte for byte as the artifact keeps it; usage is zero tokens, since no model was
billed; `model` is what the teacher's own answers carry, so a client sees the same
field whoever answered.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

from starlette.responses import Response, StreamingResponse

from router.chat import render_label, synthesize_completion, synthesize_stream

from .config import TaskConfig
from .models import LiveModel
from .routing import Route

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def answer_text(task: TaskConfig, live: LiveModel, label: str) -> str:
    """What the teacher would have written for `label`: its most frequent raw answer."""
    answers = live.router.manifest.answers
    if label in answers:
        return answers[label]
    return render_label(label, task.output.format, task.output.field)  # an older artifact


def completion(content: str, model: str, route: Route, body: Mapping[str, Any]) -> Response:
    """The handled answer as the client asked for it: JSON, or a proper SSE stream."""
    extra = {"tracer": route.body_field()}
    headers = route.headers()
    if body.get("stream"):
        options = body.get("stream_options")
        usage = isinstance(options, dict) and bool(options.get("include_usage"))
        events = [e.encode() for e in synthesize_stream(content, model, usage, extra)]
        return StreamingResponse(
            _replay(events), media_type="text/event-stream", headers={**SSE_HEADERS, **headers}
        )
    return Response(
        json.dumps(synthesize_completion(content, model, extra)),
        media_type="application/json",
        headers=headers,
    )


async def _replay(items: list[bytes]) -> AsyncIterator[bytes]:
    for item in items:
        yield item
