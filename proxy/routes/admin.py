"""The routes around the proxy's main job: models, embeddings, reports, metrics, health."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response

from ..errors import UpstreamError
from ..http import ClientError, read_json_object
from ..lane_report import render_report
from ..state import ProxyState
from ..validate import validate_embeddings

# A report shows trace text, which is user input: the browser must neither sniff it
# into something else nor run any script, whatever slipped through escaping.
REPORT_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
}


def _model_names(state: ProxyState) -> list[str]:
    names = [m.model_name for m in state.config.model_list]
    names += [
        t.match.model for t in state.config.tasks if t.match.model and t.match.model not in names
    ]
    return list(dict.fromkeys(names))


def _model_object(state: ProxyState, name: str) -> dict[str, object]:
    return {"id": name, "object": "model", "created": int(state.started_at), "owned_by": "tracer"}


async def list_models(request: Request) -> JSONResponse:
    state: ProxyState = request.app.state.tracer
    data = [_model_object(state, n) for n in _model_names(state)]
    return JSONResponse({"object": "list", "data": data})


async def get_model(request: Request) -> JSONResponse:
    state: ProxyState = request.app.state.tracer
    name = request.path_params["model"]
    if name not in _model_names(state):
        raise ClientError(
            404, f"the model `{name}` does not exist on this proxy", code="model_not_found",
            param="model",
        )  # fmt: skip
    return JSONResponse(_model_object(state, name))


async def embeddings(request: Request) -> Response:
    state: ProxyState = request.app.state.tracer
    server = state.config.server
    body = await read_json_object(request, server.max_body_bytes, server.read_timeout_seconds)
    validate_embeddings(body)
    entry = state.upstream.entry(body["model"])
    if entry is None:
        raise ClientError(
            404, f"the model `{body['model']}` does not exist on this proxy",
            code="model_not_found", param="model",
        )  # fmt: skip
    try:
        result = await state.upstream.embed(entry, body)
    except UpstreamError as err:
        state.metrics.upstream_errors.labels(err.kind).inc()
        return err.response()
    return Response(result.body, media_type="application/json")


async def task_report(request: Request) -> Response:
    """The latest report of a task: HTML, or JSON with ``?format=json``."""
    state: ProxyState = request.app.state.tracer
    task = request.path_params["task"]
    if state.config.task(task) is None:
        raise ClientError(404, f"no task named `{task}`", code="task_not_found")
    as_json = request.query_params.get("format") == "json"
    name = "report.json" if as_json else "report.html"
    path = await asyncio.to_thread(state.models.store.latest_report, task, name)
    if path is None:
        raise ClientError(404, f"task `{task}` has no report yet", code="report_not_found")
    media = "application/json" if as_json else "text/html; charset=utf-8"
    headers = {"x-tracer-model-version": path.parent.name, **REPORT_HEADERS}
    lanes = state.lanes.get(task)
    if lanes is not None and lanes.version == path.parent.name:
        body = await asyncio.to_thread(render_report, path, lanes, as_json)
        return Response(body, media_type=media, headers=headers)
    return FileResponse(path, media_type=media, headers=headers)


async def metrics_endpoint(request: Request) -> Response:
    state: ProxyState = request.app.state.tracer
    metrics = state.metrics
    if metrics.multiprocess:  # every worker's files are read: off the event loop
        body = await asyncio.to_thread(metrics.exposition)
    else:
        body = metrics.exposition()
    return Response(body, media_type=CONTENT_TYPE_LATEST)


# The store is "degraded" while its queue is above this share of store.queue_size, for
# this long after a record was dropped, or while its last write failed.
HIGH_WATER = 0.8
RECENT_DROP_S = 300.0
READY_TIMEOUT_S = 2.0


def _store_problems(state: ProxyState) -> list[str]:
    writer = state.writer
    problems = []
    if writer.pending > HIGH_WATER * writer.queue_size:
        problems.append(f"the write queue holds {writer.pending} of {writer.queue_size} records")
    if writer.last_dropped_at is not None and time.time() - writer.last_dropped_at < RECENT_DROP_S:
        ago = time.time() - writer.last_dropped_at
        problems.append(f"records were dropped {ago:.0f} s ago (tracer_store_dropped_total)")
    if writer.failing:
        problems.append(f"the last write failed: {writer.last_error}")
    return problems


async def healthz(request: Request) -> JSONResponse:
    """Liveness: always 200 while the process answers; "degraded" when the store is."""
    state: ProxyState = request.app.state.tracer
    problems = _store_problems(state)
    body: dict[str, object] = {
        "status": "degraded" if problems else "ok",
        "store_queue": state.writer.pending,
        "store_queue_size": state.writer.queue_size,
    }
    if problems:
        body["problems"] = problems
    return JSONResponse(body)


async def _store_answers(state: ProxyState) -> str | None:
    """None when the store answers a trivial query in time; else why not."""

    async def ask() -> None:
        async with state.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    try:
        await asyncio.wait_for(ask(), READY_TIMEOUT_S)
    except TimeoutError:
        return f"the store did not answer within {READY_TIMEOUT_S:.0f} s"
    except Exception as exc:
        return f"the store does not answer: {type(exc).__name__}: {state.upstream.scrub(str(exc))}"
    return None


async def readyz(request: Request) -> JSONResponse:
    """Readiness: 200 when the store answers and its write queue has room, else 503."""
    state: ProxyState = request.app.state.tracer
    reasons = []
    if (why := await _store_answers(state)) is not None:
        reasons.append(why)
    if state.writer.full:
        reasons.append(f"the write queue is full ({state.writer.queue_size} records)")
    body: dict[str, object] = {
        "status": "not_ready" if reasons else "ready",
        "store_queue": state.writer.pending,
    }
    if reasons:
        body["reasons"] = reasons
    return JSONResponse(body, status_code=503 if reasons else 200)
