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
from starlette.responses import JSONResponse, Response, StreamingResponse

from router import Decision as RouterDecision
from router.chat import parse_label, render_label, synthesize_completion, synthesize_stream

from . import store
from .answers import Answer, Completion, CompletionStream
from .config import ModelEntry, TaskConfig
from .errors import UpstreamError
from .http import ClientError, read_json_object
from .metrics import NO_TASK
from .models import LiveModel
from .tasks import task_input
from .validate import validate_chat

if TYPE_CHECKING:
    from .app import ProxyState

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@dataclass(frozen=True)
class TeacherAnswer:
    answer: Answer
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
    body = await read_json_object(
        request, state.config.server.max_body_bytes, state.config.server.read_timeout_seconds
    )
    validate_chat(body)
    task = state.matcher.match(body)
    if task is not None:
        text = task_input(task, body["messages"])
        if text is not None:
            return await route(state, task, body, text)
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


def ineligible(body: Mapping[str, Any]) -> str | None:
    """Why the surrogate cannot honour this request as asked, if it cannot."""
    if body.get("n") not in (None, 1):
        return "n > 1 asks for several samples"
    if body.get("logprobs") or body.get("top_logprobs"):
        return "logprobs were requested"
    for key in ("tools", "functions", "tool_choice", "function_call"):
        if body.get(key):
            return f"`{key}` is set"
    return None


async def route(state: ProxyState, task: TaskConfig, body: dict[str, Any], text: str) -> Response:
    """Answer locally when the live model accepts the input; otherwise ask the teacher."""
    exchange = Exchange(state, task)
    live = state.models.get(task.name)
    fallback = state.fallback_reason(task.name)
    if live is None or fallback is not None:
        reason = "no model deployed" if fallback is None else f"fallback: {fallback}"
        return await ask_teacher(exchange, body, text, Routed("teacher", reason))
    why_not = ineligible(body)
    if why_not is not None:
        return await ask_teacher(exchange, body, text, Routed("deferred", why_not, live))
    decision = await live.predict(text)
    routed = Routed(decision.decision, decision.reason, live, decision)
    if not decision.handled:
        if decision.ood:
            state.metrics.ood.labels(task.name).inc()
        return await ask_teacher(exchange, body, text, routed)
    return answer_locally(exchange, body, text, routed)


@dataclass(frozen=True)
class Routed:
    """How a task request was routed, for headers, the body and the decisions table."""

    decision: str  # handled | deferred | teacher
    reason: str
    live: LiveModel | None = None
    routed: RouterDecision | None = None

    @property
    def version(self) -> str | None:
        return self.live.version if self.live is not None else None

    @property
    def score(self) -> float | None:
        return self.routed.accept_score if self.routed is not None else None

    def headers(self) -> dict[str, str]:
        headers = {"x-tracer-decision": self.decision}
        if self.score is not None:
            headers["x-tracer-accept-score"] = f"{self.score:.6f}"
        if self.version is not None:
            headers["x-tracer-model-version"] = self.version
        return headers


def answer_locally(exchange: Exchange, body: dict[str, Any], text: str, routed: Routed) -> Response:
    state, task = exchange.state, exchange.task
    assert task is not None and routed.routed is not None
    label = routed.routed.label
    content = render_label(label, task.output.format, task.output.field)
    extra = {
        "tracer": {
            "decision": "handled",
            "label": label,
            "accept_score": routed.score,
            "model_version": routed.version,
            "reason": routed.reason,
        }
    }
    assert routed.live is not None
    if not state.maybe_audit(task, routed.live, body, text, label):
        state.handled(task.name)  # an audited request did not avoid its teacher call
    state.record_decision(
        store.Decision(
            task=task.name,
            decision="handled",
            reason=routed.reason,
            label=label,
            accept_score=routed.score,
            model_version=routed.version,
            latency_ms=exchange.elapsed_ms(),
        )
    )
    exchange.finish("handled")
    if body.get("stream"):
        options = body.get("stream_options")
        usage = isinstance(options, dict) and bool(options.get("include_usage"))
        events = [e.encode() for e in synthesize_stream(content, body["model"], usage, extra)]
        return StreamingResponse(
            _async_iter(events),
            media_type="text/event-stream",
            headers={**SSE_HEADERS, **routed.headers()},
        )
    return Response(
        json.dumps(synthesize_completion(content, body["model"], extra)),
        media_type="application/json",
        headers=routed.headers(),
    )


def store_trace(
    state: ProxyState,
    task: TaskConfig,
    text: str,
    said: Answer,
    upstream_seconds: float,
    source: str = "teacher",
) -> str | None:
    """Parse the teacher's answer into a label and queue it as a trace; the label."""
    entry = state.upstream.entry(task.teacher)
    assert entry is not None  # the config validator guarantees it
    label = parse_label(said.content, task.output.format, task.output.field, task.labels)
    state.record_trace(
        store.Trace(
            task=task.name,
            input=text,
            label=label,
            raw_output=said.content,
            model=task.teacher,
            latency_ms=upstream_seconds * 1000.0,
            prompt_tokens=said.prompt_tokens,
            completion_tokens=said.completion_tokens,
            cost_usd=state.cost(entry, said.prompt_tokens, said.completion_tokens),
            source=source,
        )
    )
    return label


def keep_answer(exchange: Exchange, text: str, routed: Routed, answer: TeacherAnswer) -> str | None:
    """Store the teacher's answer as a trace and the request as a decision; the label."""
    state, task = exchange.state, exchange.task
    assert task is not None
    source = state.trace_source(task, routed.routed is not None)
    label = store_trace(state, task, text, answer.answer, answer.upstream_seconds, source)
    reason = routed.reason if label is not None else f"{routed.reason}; answer not a valid label"
    state.record_decision(
        store.Decision(
            task=task.name,
            decision=routed.decision,
            reason=reason,
            label=label,
            accept_score=routed.score,
            model_version=routed.version,
            latency_ms=exchange.elapsed_ms(),
        )
    )
    return label


async def ask_teacher(
    exchange: Exchange, body: dict[str, Any], text: str, routed: Routed
) -> Response:
    """Send a task request to its teacher and keep the answer as a trace."""
    task = exchange.task
    assert task is not None
    entry = exchange.state.upstream.entry(task.teacher)
    assert entry is not None

    def keep(answer: TeacherAnswer) -> None:
        keep_answer(exchange, text, routed, answer)

    return await forward(exchange, entry, body, routed.decision, keep, routed.headers())


async def forward(
    exchange: Exchange,
    entry: ModelEntry,
    body: dict[str, Any],
    decision: str,
    on_answer: OnAnswer | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    state = exchange.state
    started = time.perf_counter()
    try:
        result = await state.upstream.complete(entry, body)
        if isinstance(result, Completion):
            upstream_seconds = time.perf_counter() - started
            state.metrics.upstream_latency.labels(exchange.task_label).observe(upstream_seconds)
            if on_answer is not None:
                on_answer(TeacherAnswer(result.answer(), upstream_seconds))
            exchange.finish(decision)
            return Response(result.body, media_type="application/json", headers=headers)
        # Wait for the first bytes before committing to a 200, so that an upstream that
        # fails or times out before answering still gets its proper status code.
        first: bytes | None = await anext(result)
    except UpstreamError as err:
        state.metrics.upstream_errors.labels(err.kind).inc()
        exchange.finish("error")
        return err.response()
    except StopAsyncIteration:
        first = None
    events = _relay(exchange, first, result, started, decision, on_answer)
    return StreamingResponse(
        events, media_type="text/event-stream", headers={**SSE_HEADERS, **(headers or {})}
    )


async def _relay(
    exchange: Exchange,
    first: bytes | None,
    stream: CompletionStream,
    started: float,
    decision: str,
    on_answer: OnAnswer | None,
) -> AsyncIterator[bytes]:
    state = exchange.state
    outcome = "error"
    try:
        async for chunk in _prepend(first, stream):
            yield chunk
        upstream_seconds = time.perf_counter() - started
        state.metrics.upstream_latency.labels(exchange.task_label).observe(upstream_seconds)
        if on_answer is not None:
            on_answer(TeacherAnswer(stream.answer(), upstream_seconds))
        outcome = decision
    except UpstreamError as err:
        state.metrics.upstream_errors.labels(err.kind).inc()
        yield f"data: {json.dumps(err.body())}\n\n".encode()
    finally:
        exchange.finish(outcome)


async def _prepend(first: Any, rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
    if first is not None:
        yield first
    async for item in rest:
        yield item


async def _async_iter(items: list[bytes]) -> AsyncIterator[bytes]:
    for item in items:
        yield item


async def classify(request: Request) -> Response:
    """`POST /v1/classify`: the label for one input, from the surrogate or the teacher."""
    state: ProxyState = request.app.state.tracer
    body = await read_json_object(
        request, state.config.server.max_body_bytes, state.config.server.read_timeout_seconds
    )
    name, text = body.get("task"), body.get("input")
    if not isinstance(name, str):
        raise ClientError(400, "`task` is required and must be a string", param="task")
    if not isinstance(text, str) or not text.strip():
        raise ClientError(400, "`input` is required and must be a non-empty string", param="input")
    task = state.config.task(name)
    if task is None:
        raise ClientError(404, f"no task named `{name}`", code="task_not_found", param="task")
    text = text.strip()
    exchange = Exchange(state, task)
    prompt = task.prompt or task.match.system_prompt_contains
    messages = [{"role": "system", "content": prompt}] if prompt else []
    messages.append({"role": "user", "content": text})
    live = state.models.get(task.name)
    fallback = state.fallback_reason(task.name)
    routed = Routed("teacher", "no model deployed" if fallback is None else f"fallback: {fallback}")
    if live is not None and fallback is None:
        decision = await live.predict(text)
        routed = Routed(decision.decision, decision.reason, live, decision)
        if decision.handled:
            answer_locally(exchange, {"model": task.name, "messages": messages}, text, routed)
            return JSONResponse(
                {
                    "label": decision.label,
                    "decision": "handled",
                    "accept_score": decision.accept_score,
                    "model": f"{task.name}@{live.version}",
                    "reason": decision.reason,
                },
                headers=routed.headers(),
            )
        if decision.ood:
            state.metrics.ood.labels(task.name).inc()
    entry = state.upstream.entry(task.teacher)
    assert entry is not None
    started = time.perf_counter()
    try:
        result = await state.upstream.complete(entry, {"messages": messages})
    except UpstreamError as err:
        state.metrics.upstream_errors.labels(err.kind).inc()
        exchange.finish("error")
        return err.response()
    assert isinstance(result, Completion)
    seconds = time.perf_counter() - started
    state.metrics.upstream_latency.labels(task.name).observe(seconds)
    answer = TeacherAnswer(result.answer(), seconds)
    label = keep_answer(exchange, text, routed, answer)
    if label is None:
        exchange.finish("error")
        return UpstreamError(
            502, "invalid", f"the teacher's answer is not a valid label of task `{task.name}`",
            "upstream_error",
        ).response()  # fmt: skip
    exchange.finish(routed.decision)
    return JSONResponse(
        {
            "label": label,
            "decision": "deferred",
            "accept_score": routed.score,
            "model": task.teacher,
            "reason": routed.reason,
        },
        headers=routed.headers(),
    )


async def audit_handled(
    state: ProxyState,
    task: TaskConfig,
    live: LiveModel,
    body: dict[str, Any],
    text: str,
    label: str,
) -> None:
    """Ask the teacher what it would have said to a handled request; keep it as a trace."""
    entry = state.upstream.entry(task.teacher)
    assert entry is not None
    request = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
    started = time.perf_counter()
    try:
        result = await state.upstream.complete(entry, request)
    except UpstreamError as err:
        state.metrics.upstream_errors.labels(err.kind).inc()
        state.metrics.audits.labels(task.name, "error").inc()
        return
    assert isinstance(result, Completion)
    seconds = time.perf_counter() - started
    taught = store_trace(state, task, text, result.answer(), seconds, source="audit")
    state.audit_result(task, live.version, None if taught is None else taught == label)
