"""The Starlette application: routes, shared state, and the store's lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from training.traces import SELECTED

from . import store
from .audit import MAX_IN_FLIGHT, AuditWindow, sampling_rate
from .chat import audit_handled, chat_completions, classify
from .config import Config, ModelEntry, TaskConfig
from .errors import UpstreamError
from .http import EXCEPTION_HANDLERS, ClientError, Guard, read_json_object
from .metrics import Metrics
from .models import LiveModel, LiveModels, ModelStore
from .refit import RefitLoop
from .tasks import TaskMatcher
from .upstream import Upstream, cost_of
from .validate import validate_embeddings

log = logging.getLogger("tracer.proxy")

# A report shows trace text, which is user input: the browser must neither sniff it
# into something else nor run any script, whatever slipped through escaping.
REPORT_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
}


class ProxyState:
    """Everything a request handler needs, built once per app (never at import)."""

    def __init__(self, config: Config, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.upstream = Upstream(config)
        self.matcher = TaskMatcher(config.tasks)
        self.engine = store.create_engine(config.store.url)
        self.writer = store.StoreWriter(
            self.engine,
            config.store.queue_size,
            on_stored=self._stored,
            on_dropped=self._dropped,
        )
        self.started_at = time.time()
        task_names = [t.name for t in config.tasks]
        self.models = LiveModels(ModelStore(config.artifacts.dir), task_names, self._swapped)
        self.refit_loop = RefitLoop(
            config,
            self.engine,
            self.models,
            self.metrics,
            replaceable=lambda task: task in self.fallbacks,
            on_poll=self.count_sampled,
        )
        self._teacher_cost: dict[str, tuple[float, int]] = {}
        self.audit_windows: dict[str, AuditWindow] = {}
        self.fallbacks: dict[str, str] = {}
        self._audits: set[asyncio.Task[None]] = set()
        self._rng = random.Random()
        self.sampled: dict[str, int] = {}  # valid traces that sample the traffic, by task
        self._sampled_in_store: dict[str, tuple[int, int]] = {}  # (count, through trace id)

    def fallback_reason(self, task: str) -> str | None:
        return self.fallbacks.get(task)

    def maybe_audit(
        self, task: TaskConfig, live: LiveModel, body: dict[str, Any], text: str, label: str
    ) -> bool:
        """Send a share of handled requests to the teacher too, never delaying the reply.

        True when this request is audited, i.e. it will cost a teacher call after all.
        """
        if self._rng.random() >= self.sampling_rate(task):
            return False
        if len(self._audits) >= MAX_IN_FLIGHT:
            self.metrics.audits.labels(task.name, "skipped").inc()
            return False
        job = asyncio.create_task(audit_handled(self, task, live, body, text, label))
        self._audits.add(job)
        job.add_done_callback(self._audits.discard)
        return True

    def trace_source(self, task: TaskConfig, routed_by_model: bool) -> str:
        """How a teacher answer was sampled, so a refit knows which traces may calibrate.

        A request the model deferred is one of its hard cases (`deferred`), except
        for a share drawn at the sampling rate (`explore`): with the audits of
        handled requests, drawn at the same rate, that share is a uniform sample of
        the traffic.
        """
        if not routed_by_model:
            return "teacher"
        return "explore" if self._rng.random() < self.sampling_rate(task) else "deferred"

    def sampling_rate(self, task: TaskConfig) -> float:
        return sampling_rate(task.audit_rate, task.audit_boost, self.sampled.get(task.name, 0))

    async def count_sampled(self) -> None:
        """Re-read the sampled-trace counts, which other workers' traces also move.

        Counted on from the last trace id seen, so a poll reads only new rows (a store
        whose ids commit out of order, as Postgres sequences may, can be undercounted
        by a few: the rate is a schedule, not a guarantee).
        """
        for task in self.config.tasks:
            counted, through = self._sampled_in_store.get(task.name, (0, 0))
            new, through = await store.count_sampled(self.engine, task.name, after_id=through)
            self._sampled_in_store[task.name] = (counted + new, through)
            self._set_sampled(task, counted + new)

    def _set_sampled(self, task: TaskConfig, count: int) -> None:
        self.sampled[task.name] = count
        self.metrics.sampling_rate.labels(task.name).set(self.sampling_rate(task))

    def audit_result(self, task: TaskConfig, version: str, agrees: bool | None) -> None:
        outcome = "invalid" if agrees is None else "agree" if agrees else "disagree"
        self.metrics.audits.labels(task.name, outcome).inc()
        window = self.audit_windows.get(task.name)
        if agrees is None or window is None or window.version != version:
            return  # an invalid answer says nothing; an old version's audit is moot
        window.add(agrees)
        lower, _ = window.bounds()
        self.metrics.live_agreement.labels(task.name).set(window.agreement or 0.0)
        self.metrics.live_agreement_lower.labels(task.name).set(lower)
        self.metrics.drift_score.labels(task.name).set(window.drift.score)
        verdict = window.verdict()
        if verdict is not None and task.name not in self.fallbacks:
            self.fallbacks[task.name] = verdict
            self.metrics.fallback.labels(task.name).set(1)
            log.warning(
                "task %s: falling back to the teacher until a refit passes the gate: %s",
                task.name, verdict,
            )  # fmt: skip

    def handled(self, task: str) -> None:
        """Count a teacher call avoided (handled, not audited) and its mean cost."""
        self.metrics.teacher_calls_avoided.labels(task).inc()
        total, n = self._teacher_cost.get(task, (0.0, 0))
        if n:
            self.metrics.cost_saved.labels(task).inc(total / n)

    def _swapped(self, task: str, old: LiveModel | None, new: LiveModel) -> None:
        if old is not None:
            self.metrics.model_info.remove(task, old.version)
        self.metrics.model_info.labels(task, new.version).set(1)
        cal = new.router.manifest.get("calibration") or {}
        config = self.config.task(task)
        assert config is not None
        self.audit_windows[task] = AuditWindow(new.version, config.target, config.confidence)
        if self.fallbacks.pop(task, None) is not None:
            log.info("task %s: version %s passed the gate; fallback lifted", task, new.version)
        self.metrics.fallback.labels(task).set(0)
        self.metrics.drift_score.labels(task).set(0)
        for gauge, key in [
            (self.metrics.calibration_agreement, "agreement"),
            (self.metrics.calibration_coverage, "coverage"),
        ]:
            value = cal.get(key)
            if isinstance(value, int | float):
                gauge.labels(task).set(value)

    def record_trace(self, trace: store.Trace) -> None:
        self.writer.submit(trace)

    def record_decision(self, decision: store.Decision) -> None:
        self.writer.submit(decision)

    def cost(self, entry: ModelEntry, prompt: int | None, completion: int | None) -> float | None:
        return cost_of(entry.litellm_params.model, prompt, completion)

    def _stored(self, batch: list[store.Record]) -> None:
        for record in batch:
            if isinstance(record, store.Trace):
                self.metrics.traces_stored.labels(record.task, str(record.valid).lower()).inc()
                task = self.config.task(record.task)
                if task is not None and record.valid and record.source != SELECTED:
                    self._set_sampled(task, self.sampled.get(task.name, 0) + 1)
                if record.cost_usd is not None:
                    total, n = self._teacher_cost.get(record.task, (0.0, 0))
                    self._teacher_cost[record.task] = (total + record.cost_usd, n + 1)

    def _dropped(self, record: store.Record) -> None:
        table = "traces" if isinstance(record, store.Trace) else "decisions"
        self.metrics.store_dropped.labels(table).inc()

    async def start(self, refit: bool = True) -> None:
        await store.create_schema(self.engine)
        await self.count_sampled()
        await self.upstream.start()
        self.writer.start()
        await asyncio.to_thread(self.models.refresh)
        if refit and self.config.tasks:
            self.refit_loop.start()

    async def stop(self) -> None:
        for job in list(self._audits):
            job.cancel()
        await asyncio.gather(*self._audits, return_exceptions=True)
        await self.refit_loop.stop()
        await self.writer.close()
        await self.upstream.close()
        await self.engine.dispose()


async def list_models(request: Request) -> JSONResponse:
    state: ProxyState = request.app.state.tracer
    created = int(state.started_at)
    names = [m.model_name for m in state.config.model_list]
    names += [
        t.match.model for t in state.config.tasks if t.match.model and t.match.model not in names
    ]
    data = [{"id": n, "object": "model", "created": created, "owned_by": "tracer"} for n in names]
    return JSONResponse({"object": "list", "data": data})


async def embeddings(request: Request) -> Response:
    state: ProxyState = request.app.state.tracer
    body = await read_json_object(
        request, state.config.server.max_body_bytes, state.config.server.read_timeout_seconds
    )
    validate_embeddings(body)
    model = body["model"]
    entry = state.upstream.entry(model)
    if entry is None:
        raise ClientError(
            404,
            f"the model `{model}` does not exist on this proxy",
            code="model_not_found",
            param="model",
        )
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
    state: ProxyState = request.app.state.tracer
    return JSONResponse({"status": "ok", "store_queue": state.writer.pending})


def create_app(config: Config, metrics: Metrics | None = None, refit: bool = True) -> Starlette:
    """The proxy; ``refit=False`` serves the models on disk without fitting new ones."""
    state = ProxyState(config, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await state.start(refit)
        try:
            yield
        finally:
            await state.stop()

    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/v1/classify", classify, methods=["POST"]),
        Route("/tasks/{task}/report", task_report, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
    middleware = [
        Middleware(
            Guard,
            metrics=state.metrics,
            api_keys=[k.get_secret_value() for k in config.server.api_keys],
            max_body_bytes=config.server.max_body_bytes,
        )
    ]
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.tracer = state
    return app
