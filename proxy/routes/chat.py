"""`POST /v1/chat/completions`: a task request is routed; anything else passes through.

The way of one request: read and check the body (`http`, `validate`); match a task
(`tasks`); decide its route (`routing`); then either answer locally (`local`, with
maybe an audit in the background, `audit`) or ask the teacher and keep its answer
(`teacher`). A request that matches no task is relayed unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from router.tools import MESSAGE, parse_arguments

from ..answers import Answer
from ..body_field import splice
from ..config import TaskConfig
from ..errors import UpstreamError
from ..exchange import Exchange
from ..http import ClientError, read_json_object
from ..lane_calls import LaneAnswer, LaneFailed
from ..local import answer_text, completion, tool_call
from ..pricing import call_cost
from ..routing import TEACHER, Route, shadowed
from ..state import ProxyState
from ..tasks import task_input
from ..teacher import TeacherAnswer, label_of
from ..tool_calls import narrowed_body, offered_tool
from ..validate import validate_chat

log = logging.getLogger("tracer.proxy")


async def chat_completions(request: Request) -> Response:
    state: ProxyState = request.app.state.tracer
    server = state.config.server
    body = await read_json_object(request, server.max_body_bytes, server.read_timeout_seconds)
    validate_chat(body)
    task = state.matcher.match(body)
    if task is not None:
        text = task_input(task, body["messages"])
        if text is not None:
            return await answer_task(state, task, body, text)
    return await pass_through(state, body, task)


async def pass_through(
    state: ProxyState, body: dict[str, Any], matched: TaskConfig | None
) -> Response:
    """Relay a request that is not a task's; one that names a task alias goes to that
    task's teacher, untouched, and the headers say why it was not treated as the task."""
    alias_task = matched or state.matcher.by_alias(body["model"])
    headers: dict[str, str] = {}
    if alias_task is not None:
        why = state.matcher.why_not(alias_task, body)
        headers = {"x-tracer-decision": "passthrough", "x-tracer-reason": why}
        log.debug("request for alias %s passed through: %s", body["model"], why)
    entry = state.upstream.entry(alias_task.teacher if alias_task else body["model"])
    if entry is None:
        raise ClientError(
            404,
            f"the model `{body['model']}` does not exist on this proxy",
            code="model_not_found",
            param="model",
        )
    exchange = Exchange(state.metrics, alias_task)
    return await state.teacher.forward(exchange, entry, body, "passthrough", headers=headers)


async def answer_task(
    state: ProxyState, task: TaskConfig, body: dict[str, Any], text: str
) -> Response:
    exchange = Exchange(state.metrics, task)
    route = await state.decider.decide(task, body, text)
    if task.mode == "shadow":
        route = shadowed(route, would_answer(task, route))
    if task.kind == "tools" and body.get("tools"):
        state.remember_tools(task.name, body["tools"])
    if route.handled:
        return answer_locally(state, exchange, task, route, body, text)
    if route.narrowed and state.sampling.draw(task, route.version):
        # A share goes whole to the teacher: a narrowed answer says nothing of which tool
        # the teacher would choose, and refits need an unbiased sample of that. It is also
        # an audit of the served version's tool choice, which a young version needs.
        assert route.tool is not None
        reason = f"{route.reason}; sampled for the teacher instead"
        tool = route.tool.name
        route = replace(route, reason=reason, lane=TEACHER, tool=None, sampled=True,
                        audit_tool=tool)  # fmt: skip
    if route.narrowed:
        narrowed = await narrow(state, exchange, task, route, body, text)
        if narrowed is not None:
            return narrowed
        route = replace(route, reason=f"{route.reason}; the narrowed call failed", lane="teacher")
    if route.by_lane:
        route, answer = await try_lane(state, exchange, task, route, body, text)
        if answer is not None:
            return completion(answer.content, state.teacher.model_name(task), route, body)
    return await ask_teacher(state, exchange, task, route, body, text)


async def try_lane(
    state: ProxyState,
    exchange: Exchange,
    task: TaskConfig,
    route: Route,
    body: dict[str, Any],
    text: str,
) -> tuple[Route, LaneAnswer | None]:
    """A request routed to a lane: the lane's answer (recorded), or the teacher's route.

    A share, drawn at the sampling rate, goes to the teacher instead and the lane is
    asked alongside: an audit of the lane that costs the client nothing.
    """
    if state.sampling.draw(task):
        reason = f"{route.reason}; sampled for the teacher instead"
        sampled = replace(route, reason=reason, lane=TEACHER, sampled=True, audit_lane=route.lane)
        return sampled, None
    try:
        answer = await state.lane_calls.answer(task, route, body)
    except LaneFailed as err:
        reason = f"{route.reason}; {err}: the teacher answers"
        return replace(route, reason=reason, lane=TEACHER, lane_said=err.said), None
    state.ledger.lane_answered(task.name, answer.cost_usd)
    state.metrics.lane_requests.labels(task.name, route.lane).inc()
    row = route.record(task.name, text, exchange.elapsed_ms(), answer.label)
    state.writer.submit(replace(row, cost_usd=answer.cost_usd))
    exchange.finish(route.decision)
    return route, answer


def would_answer(task: TaskConfig, route: Route) -> str | None:
    """The local answer a handled route gives, as `teacher.answer_key` writes answers."""
    if not route.handled or route.live is None or route.label is None:
        return None
    if task.kind == "tools":
        return local_call_key(route) if route.tool is not None else None
    return answer_text(task, route.live, route.label)


def answer_locally(
    state: ProxyState,
    exchange: Exchange,
    task: TaskConfig,
    route: Route,
    body: dict[str, Any],
    text: str,
) -> Response:
    assert route.live is not None and route.label is not None
    if route.tool is not None and route.tool.name != MESSAGE:
        arguments = route.tool.arguments or {}
        record_handled(state, exchange, task, route, body, text, local_call_key(route))
        return tool_call(route.tool.name, arguments, state.teacher.model_name(task), route, body)
    content = answer_text(task, route.live, route.label)
    key = local_call_key(route) if task.kind == "tools" else content
    record_handled(state, exchange, task, route, body, text, key)
    return completion(content, state.teacher.model_name(task), route, body)


def local_call_key(route: Route) -> str:
    """A local tool answer as `teacher.answer_key` writes the teacher's, to compare them."""
    assert route.tool is not None and route.live is not None
    assert route.live.router.tools is not None
    return route.live.router.tools.key(route.tool)


async def narrow(
    state: ProxyState,
    exchange: Exchange,
    task: TaskConfig,
    route: Route,
    body: dict[str, Any],
    text: str,
) -> Response | None:
    """Ask for the arguments of the certain tool only; None when that did not work."""
    assert route.tool is not None
    tool = offered_tool(body, route.tool.name)
    entry = state.upstream.entry(task.narrow_to or task.teacher)
    if tool is None or entry is None:
        return None
    try:
        answer = await state.teacher.ask(entry, narrowed_body(body, tool), task.name)
    except UpstreamError:
        return None
    calls = answer.answer.tool_calls or []
    if len(calls) != 1 or calls[0]["function"]["name"] != route.tool.name:
        return None  # it did not call the tool it was given: the teacher decides
    state.teacher.store_trace(task, text, answer, "narrowed", entry)
    said = answer.answer
    state.ledger.narrowed(
        task.name, said.prompt_tokens,
        call_cost(entry, said.prompt_tokens, said.completion_tokens),
    )  # fmt: skip
    state.teacher.record(exchange, task, text, route, route.tool.name)
    exchange.finish("deferred")
    if body.get("stream"):
        arguments = parse_arguments(calls[0]["function"]["arguments"]) or {}
        return tool_call(route.tool.name, arguments, state.teacher.model_name(task), route, body)
    assert answer.body is not None
    content = splice(answer.body, route.body_field() | {"label": route.tool.name})
    return Response(content, media_type="application/json", headers=route.headers())


def record_handled(
    state: ProxyState,
    exchange: Exchange,
    task: TaskConfig,
    route: Route,
    body: dict[str, Any],
    text: str,
    content: str,
    by_label: bool = False,
) -> None:
    """A handled request: maybe an audit, the savings, the decision and the metrics.

    `content` is the answer given (as `teacher.answer_key` writes answers); with
    `by_label` it is a label, and an audit compares labels.
    """
    audited = state.sampling.draw(task, route.version) and state.auditor.start(
        task, route, body, text, content, by_label
    )
    if not audited:
        state.ledger.avoided(task.name)  # an audited request did not avoid its teacher call
    state.metrics.lane_requests.labels(task.name, route.lane).inc()
    state.writer.submit(route.record(task.name, text, exchange.elapsed_ms(), route.label))
    exchange.finish("handled")


async def ask_teacher(
    state: ProxyState,
    exchange: Exchange,
    task: TaskConfig,
    route: Route,
    body: dict[str, Any],
    text: str,
) -> Response:
    def keep(answer: TeacherAnswer) -> None:
        label = state.teacher.keep(exchange, task, text, route, answer)
        state.lane_calls.after_teacher(task, route, body, text, answer, label)
        if route.audit_tool is not None and label is not None:
            state.auditor.record(task, route, text, agrees=label == route.audit_tool)

    def field(said: Answer) -> dict[str, Any]:
        return route.body_field() | {"label": label_of(task, said)}

    entry = state.teacher.entry(task)
    return await state.teacher.forward(
        exchange, entry, body, route.decision, keep, route.headers(), field
    )
