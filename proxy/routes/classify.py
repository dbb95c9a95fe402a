"""`POST /v1/classify`: a task's label for one input, from the surrogate or the teacher.

The surface an agent framework calls directly. It takes the same route as a chat
request with the same input (`routing.Decider`), so the decision it reports is the
one the headers, the metrics and the decisions table report.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import UpstreamError
from ..exchange import Exchange
from ..http import ClientError, read_json_object
from ..local import answer_text
from ..routing import SURROGATE, Route, shadowed
from ..state import ProxyState
from .chat import record_handled, try_lane, would_answer


async def classify(request: Request) -> Response:
    state: ProxyState = request.app.state.tracer
    server = state.config.server
    body = await read_json_object(request, server.max_body_bytes, server.read_timeout_seconds)
    name, text = body.get("task"), body.get("input")
    if not isinstance(name, str):
        raise ClientError(400, "`task` is required and must be a string", param="task")
    if not isinstance(text, str) or not text.strip():
        raise ClientError(400, "`input` is required and must be a non-empty string", param="input")
    task = state.config.task(name)
    if task is None:
        raise ClientError(404, f"no task named `{name}`", code="task_not_found", param="task")
    text = text.strip()
    prompt = task.prompt or task.match.system_prompt_contains
    messages = [{"role": "system", "content": prompt}] if prompt else []
    messages.append({"role": "user", "content": text})
    chat: dict[str, Any] = {"model": task.match.model or task.name, "messages": messages}
    if task.kind == "tools":
        tools = body["tools"] if "tools" in body else await state.known_tools(task.name)
        if not isinstance(tools, list) or not tools:
            raise ClientError(
                400, f"task `{name}` is a tool task: give `tools` (the teacher chooses among "
                "them), or send a chat request with them first", param="tools",
            )  # fmt: skip
        chat["tools"] = tools
    exchange = Exchange(state.metrics, task)
    route = await state.decider.decide(task, chat, text)
    if task.kind == "tools" and route.prediction is not None and route.prediction.handled:
        # The name is what this route answers, and the gate certified it.
        prediction = route.prediction
        route = Route("handled", prediction.reason, SURROGATE, route.live, prediction)
    if task.mode == "shadow":
        by_label = task.kind == "tools"
        route = shadowed(route, route.label if by_label else would_answer(task, route), by_label)
    if route.handled:
        assert route.live is not None and route.label is not None
        if task.kind == "tools":
            record_handled(state, exchange, task, route, chat, text, route.label, by_label=True)
        else:
            content = answer_text(task, route.live, route.label)
            record_handled(state, exchange, task, route, chat, text, content)
        model = f"{task.name}@{route.version}"
        label: str | None = route.label
    else:
        if route.by_lane:
            route, by_lane = await try_lane(state, exchange, task, route, chat, text)
            if by_lane is not None:
                return answered(by_lane.label, route, route.lane)
        try:
            answer = await state.teacher.ask(state.teacher.entry(task), chat, task.name)
        except UpstreamError as err:
            exchange.finish("error")
            return err.response()
        label = state.teacher.keep(exchange, task, text, route, answer)
        state.lane_calls.after_teacher(task, route, chat, text, answer, label)
        if label is None:
            exchange.finish("error")
            return UpstreamError(
                502, "invalid", f"the teacher's answer is not a valid label of task `{task.name}`",
                "upstream_error",
            ).response()  # fmt: skip
        exchange.finish(route.decision)
        model = task.teacher
    return answered(label, route, model)


def answered(label: str | None, route: Route, model: str) -> JSONResponse:
    return JSONResponse(
        {
            "label": label,
            "decision": route.decision,
            "accept_score": route.score,
            "model": model,
            "reason": route.reason,
            "lane": route.lane,
        },
        headers=route.headers(),
    )
