"""HTTP plumbing shared by the routes: OpenAI-shaped errors, bounded bodies, the guard.

The guard is plain ASGI rather than Starlette's BaseHTTPMiddleware: it runs on every
request, and the proxy's whole budget for added latency is a few milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import math
import re
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ErrorResponse, error_body
from .metrics import Metrics

log = logging.getLogger("tracer.http")

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


class ClientGone(Exception):
    """The client closed the connection before its body was read; nobody gets an answer."""


def error_response(
    status: int, message: str, error_type: str, code: str | None = None, param: str | None = None
) -> JSONResponse:
    return ErrorResponse(error_body(message, error_type, code, param), status_code=status)


async def client_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ClientError)
    return error_response(exc.status, exc.message, exc.error_type, exc.code, exc.param)


async def http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own 404 and 405, in OpenAI's shape rather than plain text."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message, code = f"no route {request.url.path}", "not_found"
    elif exc.status_code == 405:
        message, code = (
            f"{request.method} is not allowed on {request.url.path}",
            "method_not_allowed",
        )
    else:
        message, code = str(exc.detail), None
    return error_response(exc.status_code, message, "invalid_request_error", code)


async def client_gone_handler(request: Request, exc: Exception) -> Response:
    """One line for a client that hung up mid-upload; there is no one to answer."""
    log.info("client disconnected before its request body arrived (%s)", request.url.path)
    return Response(status_code=499)


async def server_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """A bug: the client gets OpenAI's error shape, the log gets the traceback."""
    log.error("unhandled error on %s", request.url.path, exc_info=exc)
    return error_response(500, "internal error in the proxy", "server_error", "internal_error")


EXCEPTION_HANDLERS: dict[Any, Any] = {
    ClientError: client_error_handler,
    ClientGone: client_gone_handler,
    HTTPException: http_error_handler,
    Exception: server_error_handler,
}


def too_large(limit: int) -> ClientError:
    return ClientError(413, f"request body is larger than {limit} bytes", code="request_too_large")


# Bodies larger than this are parsed and checked in a worker thread: the event loop
# never runs work that grows with what a client sends.
PARSE_INLINE_BYTES = 64 * 1024
# Nesting deeper than this is refused: no chat request needs it, and recursive code
# (ours, LiteLLM's, the JSON encoder's) must never meet a depth it cannot handle.
MAX_DEPTH = 64
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_OPEN, _CLOSE = b"[{", b"]}"


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    """A JSON number as a float, refused when too large for one (`1e999` is infinity:
    not a number JSON can carry on, upstream or in a trace)."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]} is too large a number")
    return value


def _walk(value: Any) -> Iterator[tuple[str, Any]]:
    """(path, value) of every value and key in a JSON document, iteratively."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        yield path, item
        if isinstance(item, dict):
            for key, child in item.items():
                where = f"{path}.{key}" if path else str(key)
                yield where, key
                stack.append((where, child))
        elif isinstance(item, list):
            stack.extend((f"{path}[{i}]", child) for i, child in enumerate(item))


def _depth(raw: bytes) -> int:
    """How deep a valid JSON document nests, at C speed: strings blanked out, then the
    running count of open brackets (a Python walk of a 4 MB body of a million empty
    lists held the event loop for seconds)."""
    skeleton = np.frombuffer(_STRING.sub(b'""', raw), dtype=np.uint8)
    steps = np.zeros(len(skeleton), dtype=np.int32)
    steps[(skeleton == _OPEN[0]) | (skeleton == _OPEN[1])] = 1
    steps[(skeleton == _CLOSE[0]) | (skeleton == _CLOSE[1])] = -1
    return int(np.cumsum(steps).max(initial=0))


def _has_lone_surrogate(body: Any) -> bool:
    try:
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _check_document(raw: bytes, body: Any) -> None:
    """Refuse nesting beyond MAX_DEPTH and text that is not valid Unicode (lone surrogates).

    An ordinary request pays C-speed scans of its bytes only; the document is walked
    (to name the field) only when it does hold a lone surrogate.
    """
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and _depth(raw) > MAX_DEPTH:
        raise ClientError(400, f"request body is nested deeper than {MAX_DEPTH} levels")
    if _SURROGATE_ESCAPE.search(raw) is None or not _has_lone_surrogate(body):
        return
    for path, value in _walk(body):
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                field = path or "(body)"
                raise ClientError(
                    400, f"`{field}` holds a lone UTF-16 surrogate, which is not text", param=field
                ) from None


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """A request body as a JSON object, or a ClientError that says what is wrong."""
    if not raw.strip():
        raise ClientError(400, "request body is empty; expected a JSON object")
    try:
        # Strict UTF-8 (a BOM allowed): json.loads would let surrogate bytes through.
        text = raw.decode("utf-8-sig")
        body = json.loads(text, parse_constant=_no_constants, parse_float=_finite)
    except RecursionError:
        raise ClientError(400, f"request body is nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, huge integers, NaN
        raise ClientError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ClientError(400, "request body must be a JSON object")
    _check_document(raw, body)
    return body


async def read_json_object(request: Request, limit: int, timeout_s: float = 30.0) -> dict[str, Any]:
    """The body as a JSON object, read no further than ``limit`` bytes nor ``timeout_s``."""
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise too_large(limit)
                chunks.append(chunk)
    except TimeoutError:
        raise ClientError(
            408, f"request body not received within {timeout_s:g} s", code="request_timeout"
        ) from None
    except ClientDisconnect:
        raise ClientGone from None
    raw = b"".join(chunks)
    if len(raw) > PARSE_INLINE_BYTES:
        return await asyncio.to_thread(parse_json_object, raw)
    return parse_json_object(raw)


class Guard:
    """Counts requests in flight, checks the client key, refuses oversized bodies early.

    A browser cannot send the key as a header, so under /dashboard only, the cookie the
    login form sets is accepted instead: a token derived from a key (`session_token`),
    never the key itself, so a leaked cookie opens the dashboard and nothing else. The
    page, asked for without either, redirects to the login form; any other path gets 401.
    """

    DASHBOARD = "/dashboard"
    LOGIN = "/dashboard/login"
    COOKIE = "tracer_dashboard"
    _OPEN_ASSETS = "/dashboard/static/"  # the page's own script and style: nothing secret

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        api_keys: Sequence[str],
        max_body_bytes: int,
        open_paths: Sequence[str] = ("/healthz", "/readyz", "/metrics"),
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.keys = [k.encode() for k in api_keys]
        self.sessions = [self.session_token(k).encode() for k in api_keys]
        self.limit = max_body_bytes
        self.open_paths = tuple(open_paths)

    @staticmethod
    def session_token(key: str) -> str:
        """The dashboard cookie's value for a client key."""
        return hmac.new(key.encode(), b"tracer-dashboard-session", hashlib.sha256).hexdigest()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is not None:
            if not _expects_continue(scope):
                await _drain(receive)  # (asking for it would invite the body we refuse)
            response: Response = error_response(
                refusal.status, refusal.message, refusal.error_type, refusal.code
            )
            if refusal.status == 401 and scope["path"].rstrip("/") == self.DASHBOARD:
                response = RedirectResponse(self.LOGIN, status_code=303)
            await response(scope, receive, send)
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
            if (
                scheme.lower() != b"bearer"
                or not any(hmac.compare_digest(token.strip(), key) for key in self.keys)
            ) and not self._dashboard_allows(scope["path"], headers.get(b"cookie", b"")):
                message = "missing API key" if not auth else "invalid API key"
                return ClientError(401, message, "authentication_error", "invalid_api_key")
        return None

    def _dashboard_allows(self, path: str, cookies: bytes) -> bool:
        """Under /dashboard: its login form and assets, or a valid session cookie."""
        if path != self.DASHBOARD and not path.startswith(self.DASHBOARD + "/"):
            return False
        if path == self.LOGIN or path.startswith(self._OPEN_ASSETS):
            return True
        for pair in cookies.split(b";"):
            name, _, value = pair.strip().partition(b"=")
            if name == self.COOKIE.encode() and any(
                hmac.compare_digest(value, session) for session in self.sessions
            ):
                return True
        return False


def _expects_continue(scope: Scope) -> bool:
    """The client waits for `100 Continue` before it sends the body (the server sends it
    when the body is first asked for): a refusal then goes out unasked."""
    return any(
        name == b"expect" and value.strip().lower() == b"100-continue"
        for name, value in scope["headers"]
    )


async def _drain(receive: Receive, timeout_s: float = 5.0) -> None:
    """Consume the body before answering, so the client reads our status, not a reset.

    Bounded in bytes and in time: a client that stops sending gets its answer anyway.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            message: Message = await receive()
            total = len(message.get("body", b""))
            while message.get("more_body") and total < _DRAIN_CAP:
                message = await receive()
                total += len(message.get("body", b""))
