"""`tracer serve --workers N`: N processes on one port, each a whole proxy.

The parent binds the port once (as TCP, so that accepted connections get TCP_NODELAY)
and runs uvicorn's supervisor, which starts N spawned workers sharing the socket,
replaces one that dies, and on SIGINT or SIGTERM stops them all, each finishing its
requests and flushing its store writer (`ProxyServer`). A worker builds its app with
`app()` below, from the config file named in `TRACER_CONFIG`.

The workers share nothing in memory. Through the store they share traces, the refit
lease (one fitter per task: `proxy/refit.py`), model versions and their pointers (each
worker follows them at its poll: `proxy/shared_models.py`); through a fresh folder in
PROMETHEUS_MULTIPROC_DIR, their metrics (`proxy/metrics.py`).
"""

from __future__ import annotations

import inspect
import logging
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, cast

import uvicorn
from prometheus_client.multiprocess import mark_process_dead
from starlette.applications import Starlette
from uvicorn.supervisors import multiprocess
from uvicorn.supervisors.multiprocess import Multiprocess

from .config import load_config
from .server import ProxyServer, protocol_for, uvicorn_options

CONFIG_ENV = "TRACER_CONFIG"
LOG_LEVEL_ENV = "TRACER_LOG_LEVEL"
METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

log = logging.getLogger("uvicorn.error")


def app() -> Starlette:
    """The app of one worker process: uvicorn imports this factory by name."""
    from .app import create_app

    config = load_config(os.environ[CONFIG_ENV])
    config.require_env()
    level = os.environ.get(LOG_LEVEL_ENV, "info").upper()
    logging.basicConfig(level=level, format=LOG_FORMAT)
    config.apply_environment()
    if config.server.upstream_client == "litellm":
        from .litellm_config import apply_callbacks

        apply_callbacks(config.litellm_settings, config.base_dir)
    return create_app(config)


class WorkerConfig(uvicorn.Config):
    """uvicorn's settings as the workers receive them (pickled): the HTTP protocol, a
    class made for this server's header deadline, is made in the worker."""

    def __init__(self, *args: Any, header_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout_s = header_timeout_s

    def load(self) -> None:
        self.http = protocol_for(self.header_timeout_s)
        super().load()


class WorkerProcess(multiprocess.Process):
    """uvicorn's worker process, served by `ProxyServer`; its live gauges die with it."""

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            self._server = ProxyServer(config=self.config)
        return self._server

    def join(self) -> None:
        super().join()
        if self.pid is not None and os.environ.get(METRICS_ENV):
            mark_process_dead(self.pid)  # type: ignore[no-untyped-call]


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def serve_workers(
    config_path: str | Path,
    *,
    host: str,
    port: int,
    workers: int,
    keep_alive_s: float,
    read_timeout_s: float,
    log_level: str = "info",
    access_log: bool = False,
) -> None:
    """Serve the proxy from `workers` processes until SIGINT or SIGTERM."""
    metrics_dir = tempfile.mkdtemp(prefix="tracer-metrics-")
    os.environ[CONFIG_ENV] = str(Path(config_path).resolve())
    os.environ[LOG_LEVEL_ENV] = log_level
    os.environ[METRICS_ENV] = metrics_dir  # before any worker starts: each reads it at import
    options = uvicorn_options(
        keep_alive_s=keep_alive_s,
        read_timeout_s=read_timeout_s,
        log_level=log_level,
        access_log=access_log,
    )
    del options["http"]  # made in each worker (WorkerConfig.load)
    config = WorkerConfig(
        "proxy.workers:app", factory=True, host=host, port=port, workers=workers,
        header_timeout_s=read_timeout_s, **options,
    )  # fmt: skip
    sock = bind(host, port)
    log.info("Uvicorn running on http://%s:%d with %d workers (Press CTRL+C to quit)",
             host, sock.getsockname()[1], workers)  # fmt: skip
    original = multiprocess.Process
    try:
        if "target" in inspect.signature(Multiprocess).parameters:  # an older uvicorn
            supervisor = cast(Any, Multiprocess)
            supervisor(config, target=ProxyServer(config).run, sockets=[sock]).run()
        else:
            multiprocess.Process = WorkerProcess  # type: ignore[misc]
            Multiprocess(config, sockets=[sock]).run()
    finally:
        multiprocess.Process = original  # type: ignore[misc]
        sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
