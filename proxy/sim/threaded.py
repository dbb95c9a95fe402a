"""Serve an ASGI app with uvicorn on a background thread: for tests, the demo and benchmarks.

The socket is bound before the server starts, so ``port=0`` gives a free port that is
known at once, and nothing races for it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

from ..server import ProxyServer


@contextlib.contextmanager
def serve_in_thread(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 0,
    name: str = "uvicorn",
    timeout_s: float = 30.0,
    **uvicorn_options: Any,
) -> Iterator[str]:
    """Yield ``http://host:port`` once the server accepts connections; stop it on exit."""
    # proto=IPPROTO_TCP so asyncio sets TCP_NODELAY on accepted connections (else each
    # keep-alive response stalls ~40 ms in Nagle + delayed ACK).
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        bound_port = sock.getsockname()[1]
        options: dict[str, Any] = {
            "log_level": "warning",
            "access_log": False,
            "lifespan": "auto",
            "timeout_graceful_shutdown": 5,
            "timeout_keep_alive": 75,  # longer than clients' pools keep idle connections
        }
        options.update(uvicorn_options)
        server = ProxyServer(uvicorn.Config(app, **options))
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name=name, daemon=True
        )
        thread.start()
        deadline = time.monotonic() + timeout_s
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                thread.join(timeout_s)
                raise RuntimeError(f"{name} failed to start on {host}:{bound_port}")
            time.sleep(0.01)
        try:
            yield f"http://{f'[{host}]' if family == socket.AF_INET6 else host}:{bound_port}"
        finally:
            server.should_exit = True
            thread.join(timeout_s)
    finally:
        sock.close()
