"""`POST /v1/chat/completions`: pass-through, or a classification task's teacher call.

A request that matches no task is relayed unchanged. A task request goes to the
task's teacher; its answer is parsed into a label and queued as a trace. Streams
are relayed chunk by chunk as they arrive, and the trace is written once the
stream has ended.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from router.chat import parse_label

from . import store
from .config import ModelEntry, TaskConfig
from .http import ClientError, error_body, error_response, read_json_object
from .metrics import NO_TASK
from .tasks import task_input
from .upstream import UpstreamError, content_of, openai_json, usage_of

if TYPE_CHECKING:
    from .app import ProxyState

_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def validate_chat(body: Mapping[str, Any]) -> None:
    """Refuse, with a message that says what is wrong, what the upstream would refuse."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ClientError(400, "`model` is required and must be a string", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ClientError(
            400, "`messages` is required and must be a non-empty list", param="messages"
        )
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise ClientError(400, f"{where} must be an object", param=where)
        if message.get("role") not in _ROLES:
            raise ClientError(
                400, f"{where}.role must be one of {sorted(_ROLES)}", param=f"{where}.role"
            )
        content = message.get("content")
        if not (content is None or isinstance(content, str) or _is_parts(content)):
            raise ClientError(
                400,
                f"{where}.content must be a string or a list of content parts",
                param=f"{where}.content",
            )
    if "stream" in body and not isinstance(body["stream"], bool):
        raise ClientError(400, "`stream` must be a boolean", param="stream")


def _is_parts(content: object) -> bool:
    return isinstance(content, list) and all(
        isinstance(p, dict) and isinstance(p.get("type"), str) for p in content
    )


@dataclass(frozen=True)
class TeacherAnswer:
    content: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    upstream_seconds: float


OnAnswer = Callable[[TeacherAnswer], None]


class Exchange:
    """One request's bookkeeping: its task label for metrics and when it started."""

    def __init__(self, state: ProxyState, task: TaskConfig | None) -> None:
        self.state = state
        self.task = task
        self.task_label = task.name if task is not None else NO_TASK
        self.started = time.perf_counter()

    def finish(self, decision: str) -> None:
        metrics = self.state.metrics
        metrics.requests.labels(self.task_label, decision).inc()
        metrics.request_latency.labels(self.task_label).observe(time.perf_counter() - self.started)

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000.0


async def chat_completions(request: Request) -> Response:
    state: ProxyState = request.app.state.tracer
    body = await read_json_object(request, state.config.server.max_body_bytes)
    validate_chat(body)
    task = state.matcher.match(body)
    if task is not None:
        text = task_input(task, body["messages"])
        if text is not None:
            return await ask_teacher(state, task, body, text)
    alias_task = state.matcher.by_alias(body["model"])
    entry = state.upstream.entry(alias_task.teacher if alias_task else body["model"])
    if entry is None:
        raise ClientError(
            404,
            f"the model `{body['model']}` does not exist on this proxy",
            "invalid_request_error",
            "model_not_found",
            "model",
        )
    return await forward(Exchange(state, alias_task), entry, body, "passthrough")


async def ask_teacher(
    state: ProxyState, task: TaskConfig, body: dict[str, Any], text: str
) -> Response:
    """Send a task request to its teacher and keep the answer as a trace."""
    exchange = Exchange(state, task)
    entry = state.upstream.entry(task.teacher)
    assert entry is not None  # the config validator guarantees it

    def keep(answer: TeacherAnswer) -> None:
        label = parse_label(answer.content, task.output.format, task.output.field, task.labels)
        state.record_trace(
            store.Trace(
                task=task.name,
                input=text,
                label=label,
                raw_output=answer.content,
                model=task.teacher,
                latency_ms=answer.upstream_seconds * 1000.0,
                prompt_tokens=answer.prompt_tokens,
                completion_tokens=answer.completion_tokens,
                cost_usd=state.cost(entry, answer.prompt_tokens, answer.completion_tokens),
            )
        )
        state.record_decision(
            store.Decision(
                task=task.name,
                decision="teacher",
                reason="no model deployed"
                if label is not None
                else "teacher answer not a valid label",
                label=label,
                latency_ms=exchange.elapsed_ms(),
            )
        )

    return await forward(exchange, entry, body, "teacher", keep)


async def forward(
    exchange: Exchange,
    entry: ModelEntry,
    body: dict[str, Any],
    decision: str,
    on_answer: OnAnswer | None = None,
) -> Response:
    state = exchange.state
    started = time.perf_counter()
    try:
        result = await state.upstream.complete(entry, body)
    except UpstreamError as err:
        state.metrics.upstream_errors.labels(err.kind).inc()
        exchange.finish("error")
        return error_response(err.status, err.message, err.error_type, err.code)
    if not body.get("stream"):
        upstream_seconds = time.perf_counter() - started
        state.metrics.upstream_latency.labels(exchange.task_label).observe(upstream_seconds)
        if on_answer is not None:
            on_answer(TeacherAnswer(content_of(result), *usage_of(result), upstream_seconds))
        response = Response(openai_json(result), media_type="application/json")
        exchange.finish(decision)
        return response
    # Wait for the first chunk before committing to a 200, so that an upstream that
    # fails or times out before answering still gets its proper status code.
    chunks = state.upstream.relay(result)
    try:
        first = await anext(chunks)
    except UpstreamError as err:
        state.metrics.upstream_errors.labels(err.kind).inc()
        exchange.finish("error")
        return error_response(err.status, err.message, err.error_type, err.code)
    except StopAsyncIteration:
        first = None
    events = _relay(exchange, first, chunks, started, decision, on_answer)
    return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)


async def _relay(
    exchange: Exchange,
    first: Any,
    chunks: AsyncIterator[Any],
    started: float,
    decision: str,
    on_answer: OnAnswer | None,
) -> AsyncIterator[str]:
    state = exchange.state
    parts: list[str] = []
    usage: tuple[int | None, int | None] = (None, None)
    outcome = "error"
    try:
        async for chunk in _prepend(first, chunks):
            if chunk.choices:
                delta = getattr(chunk.choices[0], "delta", None)
                piece = getattr(delta, "content", None)
                if isinstance(piece, str):
                    parts.append(piece)
            if getattr(chunk, "usage", None) is not None:
                usage = usage_of(chunk)
            yield f"data: {openai_json(chunk)}\n\n"
        upstream_seconds = time.perf_counter() - started
        state.metrics.upstream_latency.labels(exchange.task_label).observe(upstream_seconds)
        if on_answer is not None:
            on_answer(TeacherAnswer("".join(parts), *usage, upstream_seconds))
        outcome = decision
        yield "data: [DONE]\n\n"
    except UpstreamError as err:
        state.metrics.upstream_errors.labels(err.kind).inc()
        yield f"data: {json.dumps(error_body(err.message, err.error_type, err.code))}\n\n"
    finally:
        exchange.finish(outcome)


async def _prepend(first: Any, rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
    if first is not None:
        yield first
    async for item in rest:
        yield item
