"""HTTP plumbing shared by the routes: OpenAI-shaped errors, bounded bodies, the guard.

The guard is plain ASGI rather than Starlette's BaseHTTPMiddleware: it runs on every
request, and the proxy's whole budget for added latency is a few milliseconds.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .metrics import Metrics

_DRAIN_CAP = 256 * 1024 * 1024


class ClientError(Exception):
    """A request the proxy refuses, with the status and OpenAI error fields to send."""

    def __init__(
        self,
        status: int,
        message: str,
        error_type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.code = code
        self.param = param


def error_body(
    message: str, error_type: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def error_response(
    status: int, message: str, error_type: str, code: str | None = None, param: str | None = None
) -> JSONResponse:
    return JSONResponse(error_body(message, error_type, code, param), status_code=status)


async def client_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ClientError)
    return error_response(exc.status, exc.message, exc.error_type, exc.code, exc.param)


def too_large(limit: int) -> ClientError:
    return ClientError(413, f"request body is larger than {limit} bytes", code="request_too_large")


async def read_json_object(request: Request, limit: int) -> dict[str, Any]:
    """The body as a JSON object, read no further than ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw:
        raise ClientError(400, "request body is empty; expected a JSON object")
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ClientError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ClientError(400, "request body must be a JSON object")
    return body


class Guard:
    """Counts requests in flight, checks the client key, refuses oversized bodies early."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        api_keys: Sequence[str],
        max_body_bytes: int,
        open_paths: Sequence[str] = ("/healthz", "/metrics"),
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.keys = [k.encode() for k in api_keys]
        self.limit = max_body_bytes
        self.open_paths = tuple(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is not None:
            await _drain(receive)
            await error_response(refusal.status, refusal.message, refusal.error_type, refusal.code)(
                scope, receive, send
            )
            return
        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send)
        finally:
            self.metrics.in_flight.dec()

    def _refusal(self, scope: Scope) -> ClientError | None:
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return too_large(self.limit)
        if self.keys and not scope["path"].startswith(self.open_paths):
            auth = headers.get(b"authorization", b"")
            scheme, _, token = auth.partition(b" ")
            if scheme.lower() != b"bearer" or not any(
                hmac.compare_digest(token.strip(), key) for key in self.keys
            ):
                message = "missing API key" if not auth else "invalid API key"
                return ClientError(401, message, "authentication_error", "invalid_api_key")
        return None


async def _drain(receive: Receive) -> None:
    """Consume the body before answering, so the client reads our status, not a reset."""
    message: Message = await receive()
    total = len(message.get("body", b""))
    while message.get("more_body") and total < _DRAIN_CAP:
        message = await receive()
        total += len(message.get("body", b""))
