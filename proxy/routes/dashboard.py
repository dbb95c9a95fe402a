"""The dashboard's routes: the page, its data, its assets, and a login form for browsers.

The page shows trace text, which is user input. It is written into the page only
through `textContent` (never parsed as HTML), and the page and its assets are served
with a policy that runs no script but the page's own file, so text that slipped
through anyway could still do nothing.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import html
from importlib import resources
from urllib.parse import parse_qs

from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from ..dashboard.data import Dashboard
from ..dashboard.series import RANGES
from ..http import ClientError, ClientGone, Guard
from ..state import ProxyState

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": CSP,
    "Referrer-Policy": "same-origin",  # no-referrer would make a form's Origin "null"
    "Cache-Control": "no-store",
}
ASSETS = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
LOGIN_BODY_BYTES = 4096  # a form with one key; anything longer is not a login
SESSION_SECONDS = 12 * 3600


@functools.cache
def _static(name: str) -> bytes:
    """A file shipped in proxy/dashboard/static (package data), read once."""
    return resources.files("proxy.dashboard").joinpath("static", name).read_bytes()


def _board(request: Request) -> Dashboard:
    """The app's one Dashboard, made on first use (a proxy nobody watches keeps none)."""
    board: Dashboard | None = getattr(request.app.state, "dashboard", None)
    if board is None:
        board = request.app.state.dashboard = Dashboard(request.app.state.tracer)
    return board


async def page(request: Request) -> Response:
    return HTMLResponse(_static("dashboard.html"), headers=HEADERS)


async def asset(request: Request) -> Response:
    name = request.path_params["file"]
    if name not in ASSETS:
        raise ClientError(404, f"no dashboard asset {name!r}", code="not_found")
    return Response(_static(name), media_type=ASSETS[name], headers=HEADERS)


async def data(request: Request) -> JSONResponse:
    """`?task=NAME&range=hour|day|week`: the JSON the page renders (default: the first task,
    the last hour). `&have=VERSION`: the page already holds that version's held-out points,
    which do not change, so the map sends only its live ones (`heldout: null`)."""
    board = _board(request)
    range_name = request.query_params.get("range", "hour")
    if range_name not in RANGES:
        raise ClientError(400, f"range must be one of {', '.join(RANGES)}", param="range")
    tasks = board.tasks
    task = request.query_params.get("task") or (tasks[0] if tasks else None)
    if task is None:
        return JSONResponse({"tasks": [], "task": None, "range": range_name}, headers=HEADERS)
    if task not in tasks:
        raise ClientError(404, f"no task named `{task}`", code="task_not_found", param="task")
    payload = await board.data(task, range_name)
    have = request.query_params.get("have")
    if have and have == payload["map"]["version"]:  # the page holds that version's points
        payload = {**payload, "map": {**payload["map"], "heldout": None, "centres": None}}
    return JSONResponse(payload, headers=HEADERS)


def _login_page(message: str = "", status: int = 200) -> HTMLResponse:
    text = _static("login.html").decode("utf-8").replace("{message}", html.escape(message))
    return HTMLResponse(text, status_code=status, headers=HEADERS)


def _same_origin(request: Request) -> bool:
    """A form posted from another site is refused: browsers say where a POST comes from
    (Sec-Fetch-Site, else Origin); a client that says neither is not a browser."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site == "same-origin"
    origin = request.headers.get("origin")
    if origin is None:
        return True
    host = request.headers.get("host", "")
    return origin in (f"http://{host}", f"https://{host}")


async def _form_key(request: Request, timeout_s: float) -> str:
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > LOGIN_BODY_BYTES:
                    raise ClientError(413, "a login form is a few bytes", code="request_too_large")
                chunks.append(chunk)
    except TimeoutError:
        raise ClientError(408, "login form not received in time", code="request_timeout") from None
    except ClientDisconnect:
        raise ClientGone from None
    try:
        fields = parse_qs(b"".join(chunks).decode("utf-8", "replace"), max_num_fields=8)
    except ValueError:  # more fields than a login form has
        raise ClientError(400, "a login form has one field, `key`") from None
    return (fields.get("key") or [""])[0].strip()


async def login_form(request: Request) -> Response:
    state: ProxyState = request.app.state.tracer
    if not state.config.server.api_keys:
        return RedirectResponse(Guard.DASHBOARD, status_code=303)
    return _login_page()


async def login(request: Request) -> Response:
    """Check the key in the form; on success set the session cookie and go to the page."""
    state: ProxyState = request.app.state.tracer
    keys = [k.get_secret_value() for k in state.config.server.api_keys]
    if not keys:
        return RedirectResponse(Guard.DASHBOARD, status_code=303)
    if not _same_origin(request):
        return _login_page("This form must be sent from the dashboard's own page.", 403)
    key = await _form_key(request, state.config.server.read_timeout_seconds)
    matches = [hmac.compare_digest(key.encode(), k.encode()) for k in keys]
    if not any(matches):
        return _login_page("That key is not valid.", 401)
    response = RedirectResponse(Guard.DASHBOARD, status_code=303)
    response.set_cookie(
        Guard.COOKIE,
        Guard.session_token(key),
        max_age=SESSION_SECONDS,
        path=Guard.DASHBOARD,
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )
    return response


async def logout(request: Request) -> Response:
    response = RedirectResponse(Guard.LOGIN, status_code=303)
    response.delete_cookie(Guard.COOKIE, path=Guard.DASHBOARD, httponly=True, samesite="strict")
    return response


def routes() -> list[Route]:
    return [
        Route("/dashboard", page, methods=["GET"]),
        Route("/dashboard/data", data, methods=["GET"]),
        Route("/dashboard/static/{file}", asset, methods=["GET"]),
        Route("/dashboard/login", login_form, methods=["GET"]),
        Route("/dashboard/login", login, methods=["POST"]),
        Route("/dashboard/logout", logout, methods=["POST"]),
    ]
