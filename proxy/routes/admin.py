"""The routes around the proxy's main job: models, embeddings, reports, metrics, health."""

from __future__ import annotations

import asyncio

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response

from ..errors import UpstreamError
from ..http import ClientError, read_json_object
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
    return FileResponse(path, media_type=media, headers=headers)


async def metrics_endpoint(request: Request) -> Response:
    state: ProxyState = request.app.state.tracer
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def healthz(request: Request) -> JSONResponse:
    """Liveness: the process answers. The store's state is shown, not judged."""
    state: ProxyState = request.app.state.tracer
    return JSONResponse({"status": "ok", "store_queue": state.writer.pending})
