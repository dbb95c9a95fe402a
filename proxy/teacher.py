"""The teacher's path: forward a request upstream, relay the answer, keep it as a trace.

A non-streamed answer is checked whole before it is passed on; a stream is relayed
chunk by chunk as it arrives, read on the way, and kept once it has ended complete.
An upstream failure before the first byte keeps its status code; one after it ends
the stream with an `error` event. Only a complete answer becomes a trace.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.responses import Response, StreamingResponse

from router.chat import parse_label, same_answer
from router.tools import call_json, tool_label
from router.traces import Source

from . import store
from .answers import Answer, Completion, CompletionStream
from .body_field import Field, splice, splice_stream
from .config import ModelEntry, TaskConfig
from .errors import UpstreamError
from .exchange import Exchange
from .local import SSE_HEADERS
from .metrics import Metrics
from .pricing import call_cost
from .routing import Route
from .sampling import SamplingPolicy
from .upstream import Upstream


@dataclass(frozen=True)
class TeacherAnswer:
    answer: Answer
    seconds: float
    body: bytes | None = None  # the upstream's bytes, for a non-streamed call


def label_of(task: TaskConfig, said: Answer) -> str | None:
    """The teacher's answer as the task's label, or None when it is not a valid one."""
    if task.kind == "tools":
        return tool_label(said.tool_calls, said.content)
    return parse_label(said.content, task.output.format, task.output.field, task.labels)


def answer_key(task: TaskConfig, said: Answer) -> str | None:
    """The whole answer as text: what a local answer must equal (a tool task's calls with
    parsed arguments; a classification's content as written)."""
    if task.kind == "tools":
        return call_json(said.tool_calls, said.content)
    return said.content


OnAnswer = Callable[[TeacherAnswer], None]
FieldOf = Callable[[Answer], Field]


async def _prepend(first: bytes | None, stream: CompletionStream) -> AsyncGenerator[bytes, None]:
    if first is not None:
        yield first
    async for chunk in stream:
        yield chunk


class Teacher:
    def __init__(
        self,
        upstream: Upstream,
        writer: store.StoreWriter,
        metrics: Metrics,
        sampling: SamplingPolicy,
    ) -> None:
        self.upstream = upstream
        self.writer = writer
        self.metrics = metrics
        self.sampling = sampling
        self._models_seen: dict[str, str] = {}  # task -> the model its teacher's answers name

    def model_name(self, task: TaskConfig) -> str:
        """The `model` of every answer to a task, local or not: what the teacher's own
        answers say (a client sees the same field whoever answered), or before any, the
        teacher's model as configured."""
        seen = self._models_seen.get(task.name)
        if seen is not None:
            return seen
        return self.entry(task).litellm_params.model.split("/", 1)[-1]

    def entry(self, task: TaskConfig) -> ModelEntry:
        entry = self.upstream.entry(task.teacher)
        assert entry is not None  # the config validator guarantees it
        return entry

    # -- calls ------------------------------------------------------------------------------
    async def ask(self, entry: ModelEntry, body: dict[str, Any], task_label: str) -> TeacherAnswer:
        """A non-streamed call whose answer the proxy reads (audits, classify)."""
        started = time.perf_counter()
        request = {k: v for k, v in body.items() if k != "stream_options"}
        try:
            result = await self.upstream.complete(entry, {**request, "stream": False})
        except UpstreamError as err:
            self.metrics.upstream_errors.labels(err.kind).inc()
            raise
        assert isinstance(result, Completion)
        seconds = time.perf_counter() - started
        self.metrics.upstream_latency.labels(task_label).observe(seconds)
        return TeacherAnswer(result.answer(), seconds, result.body)

    async def forward(
        self,
        exchange: Exchange,
        entry: ModelEntry,
        body: dict[str, Any],
        decision: str,
        on_answer: OnAnswer | None = None,
        headers: Mapping[str, str] | None = None,
        field: FieldOf | None = None,
    ) -> Response:
        """Relay a request to `entry` and its answer back; `on_answer` gets a whole answer,
        and `field` makes the answer's `tracer` field (`body_field`) from it."""
        started = time.perf_counter()
        try:
            result = await self.upstream.complete(entry, body)
            if isinstance(result, Completion):
                seconds = time.perf_counter() - started
                self.metrics.upstream_latency.labels(exchange.task_label).observe(seconds)
                if on_answer is not None:
                    on_answer(TeacherAnswer(result.answer(), seconds))
                exchange.finish(decision)
                content = result.body
                if field is not None:
                    content = splice(content, field(result.answer()))
                return Response(content, media_type="application/json", headers=headers)
            # Wait for the first bytes before committing to a 200, so that an upstream that
            # fails or times out before answering still gets its proper status code.
            stream: CompletionStream = result
            first: bytes | None = await anext(stream)
        except UpstreamError as err:
            self.metrics.upstream_errors.labels(err.kind).inc()
            exchange.finish("error")
            return err.response()
        except StopAsyncIteration:
            first = None
        events = self._relay(exchange, first, stream, started, decision, on_answer, field)
        return StreamingResponse(
            events, media_type="text/event-stream", headers={**SSE_HEADERS, **(headers or {})}
        )

    async def _relay(
        self,
        exchange: Exchange,
        first: bytes | None,
        stream: CompletionStream,
        started: float,
        decision: str,
        on_answer: OnAnswer | None,
        field: FieldOf | None,
    ) -> AsyncIterator[bytes]:
        outcome = "error"
        source = _prepend(first, stream)
        if field is not None:
            source = splice_stream(source, lambda: field(stream.answer()))
        try:
            async with contextlib.aclosing(source) as chunks:
                async for chunk in chunks:
                    yield chunk
            seconds = time.perf_counter() - started
            self.metrics.upstream_latency.labels(exchange.task_label).observe(seconds)
            if on_answer is not None:
                on_answer(TeacherAnswer(stream.answer(), seconds))
            outcome = decision
        except UpstreamError as err:
            self.metrics.upstream_errors.labels(err.kind).inc()
            yield f"data: {json.dumps(err.body())}\n\n".encode()
        finally:
            exchange.finish(outcome)

    # -- keeping answers ----------------------------------------------------------------------
    def store_trace(
        self,
        task: TaskConfig,
        text: str,
        answer: TeacherAnswer,
        source: Source,
        entry: ModelEntry | None = None,
    ) -> str | None:
        """Parse an answer (the teacher's, or a narrowing model's) into a label and queue
        it as a trace; the label."""
        said = answer.answer
        label = label_of(task, said)
        entry = entry or self.entry(task)
        self.writer.submit(
            store.Trace(
                task=task.name,
                input=text,
                label=label,
                raw_output=answer_key(task, said),
                model=entry.model_name,
                latency_ms=answer.seconds * 1000.0,
                prompt_tokens=said.prompt_tokens,
                completion_tokens=said.completion_tokens,
                cost_usd=call_cost(entry, said.prompt_tokens, said.completion_tokens),
                source=source,
            )
        )
        return label

    def keep(
        self, exchange: Exchange, task: TaskConfig, text: str, route: Route, answer: TeacherAnswer
    ) -> str | None:
        """A request the teacher answered: its trace and its decision; the label."""
        if answer.answer.model is not None:
            self._models_seen[task.name] = answer.answer.model
        source = "explore" if route.sampled else self.sampling.source(task, route.consulted_model)
        label = self.store_trace(task, text, answer, source)
        self.record(exchange, task, text, route, label, self._shadow_agrees(task, route, answer))
        return label

    def _shadow_agrees(self, task: TaskConfig, route: Route, answer: TeacherAnswer) -> bool | None:
        """Shadow mode: would the local answer have been the teacher's? (None: no local one)"""
        shadow = route.shadow
        if shadow is None:
            return None
        self.metrics.shadow_requests.labels(task.name, shadow.would).inc()
        if shadow.answer is None:
            return None
        said = answer.answer
        cost = call_cost(self.entry(task), said.prompt_tokens, said.completion_tokens)
        if cost is not None:
            self.metrics.shadow_savable.labels(task.name).inc(cost)
        if shadow.by_label:
            agrees = shadow.answer == label_of(task, answer.answer)
        else:
            theirs = answer_key(task, answer.answer)
            fmt = task.output.format if task.kind == "classify" else "json"
            agrees = theirs is not None and same_answer(shadow.answer, theirs, fmt)
        self.metrics.shadow_checks.labels(task.name, "agree" if agrees else "disagree").inc()
        return agrees

    def record(
        self,
        exchange: Exchange,
        task: TaskConfig,
        text: str,
        route: Route,
        label: str | None,
        shadow_agrees: bool | None = None,
    ) -> None:
        """The decisions-table row of a request answered upstream."""
        reason = route.reason if label is not None else f"{route.reason}; answer not a valid label"
        self.metrics.lane_requests.labels(task.name, route.lane).inc()
        self.writer.submit(
            route.record(task.name, text, exchange.elapsed_ms(), label, reason, shadow_agrees)
        )
