"""The Starlette application: its routes, the guard in front of them, and the lifespan."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from .config import Config
from .http import EXCEPTION_HANDLERS, Guard
from .metrics import Metrics
from .routes.admin import (
    embeddings,
    get_model,
    healthz,
    list_models,
    metrics_endpoint,
    readyz,
    task_report,
)
from .routes.chat import chat_completions
from .routes.classify import classify
from .routes.dashboard import routes as dashboard_routes
from .state import ProxyState


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
        Route("/v1/classify", classify, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", get_model, methods=["GET"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/tasks/{task}/report", task_report, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        *dashboard_routes(),
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
