"""How the proxy is served: uvicorn, with the HTTP protocol's edges made safe.

uvicorn answers a malformed request with a plain-text 400, waits forever for the
headers of a request that was begun but never finished, and on a second signal
during shutdown skips the application's own shutdown, so queued traces would be
lost. These subclasses close each of those gaps; `uvicorn_options` gives every
way of serving the proxy (the CLI, tests, the demo) the same settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import threading
from collections.abc import Callable, Generator
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_STATUS_400 = b"HTTP/1.1 400 Bad Request\r\n"


class GuardedHttpProtocol(HttpToolsProtocol):
    """httptools' protocol with a deadline for request headers and JSON 400s."""

    header_timeout_s: float = 30.0  # set per server by `protocol_for`

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._disarm_header_timer()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        if getattr(self, "_header_timer", None) is None:
            self._header_timer: asyncio.TimerHandle | None = self.loop.call_later(
                self.header_timeout_s, self._headers_too_slow
            )

    def _disarm_header_timer(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        """A connection that began a request and stalled (or never began one) is closed."""
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        body = json.dumps(
            {
                "error": {
                    "message": msg,
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "invalid_http_request",
                }
            }
        ).encode()
        head = [_STATUS_400]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        self.transport.close()


def protocol_for(header_timeout_s: float) -> type[GuardedHttpProtocol]:
    """A protocol class bound to this server's deadline (uvicorn takes a class)."""
    return type("ProxyHttpProtocol", (GuardedHttpProtocol,), {"header_timeout_s": header_timeout_s})


class ProxyServer(uvicorn.Server):
    """uvicorn's server, except that the application's shutdown always runs.

    On a second SIGINT uvicorn stops waiting for open connections and also skips the
    lifespan shutdown, which is where the store writer flushes queued records. The
    first part is what an impatient operator wants; the second loses data. Here the
    shutdown runs anyway, and the writer bounds it (and logs what it abandons).
    """

    on_hangup: Callable[[], object] | None = None  # SIGHUP: `proxy.reload`

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """uvicorn's signals, and SIGHUP for `on_hangup` (main thread only, as uvicorn's)."""
        with super().capture_signals():
            hangup = getattr(signal, "SIGHUP", None)
            main = threading.current_thread() is threading.main_thread()
            if self.on_hangup is None or hangup is None or not main:
                yield
                return
            action = self.on_hangup
            previous = signal.signal(hangup, lambda *_: action())
            try:
                yield
            finally:
                signal.signal(hangup, previous)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await super().shutdown(sockets)
        if self.force_exit:
            await self.lifespan.shutdown()


def uvicorn_options(
    *,
    keep_alive_s: float,
    read_timeout_s: float,
    log_level: str = "warning",
    access_log: bool = False,
) -> dict[str, Any]:
    """Settings shared by `tracer serve`, the tests and the demo."""
    return {
        "http": protocol_for(read_timeout_s),
        "log_level": log_level,
        "access_log": access_log,
        "lifespan": "on",
        "timeout_graceful_shutdown": 10,
        "timeout_keep_alive": keep_alive_s,
    }
