"""The benches' local servers: the simulated teacher and `tracer serve`, as subprocesses.

One place for how they start on free loopback ports, are waited for and are stopped, so
that every bench measures the proxy as the others start it.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env() -> dict[str, str]:
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextlib.contextmanager
def teacher(traces: Path, latency_ms: float | None, log: Path) -> Iterator[str]:
    """`tracer sim-teacher` over `traces` (its own latency when `latency_ms` is None)."""
    cmd = [sys.executable, "-m", "proxy.cli", "sim-teacher", "--data", str(traces)]
    cmd += ["--port", "0"]
    if latency_ms is not None:
        cmd += ["--latency-ms", str(latency_ms)]
    with log.open("w") as err:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=err, text=True
        )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        url = proc.stdout.readline().strip() if ready else ""
        if not url.startswith("http"):
            raise RuntimeError(f"simulated teacher did not start:\n{log.read_text()[-2000:]}")
        yield url
    finally:
        stop(proc)


@contextlib.contextmanager
def http_server(
    cmd: list[str], port: int, probe: str, what: str, log: Path
) -> Iterator[tuple[str, int]]:
    """Run `cmd`, wait until GET `probe` answers 200, yield (base URL + /v1, pid); stop it."""
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(), stdout=out, stderr=out, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start:\n{log.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}{probe}", timeout=1).status_code == 200:
                    break
            time.sleep(0.1)
        yield f"{base}/v1", proc.pid
    finally:
        stop(proc)


def proxy(
    config: Path, log: Path, workers: int | None = 1
) -> contextlib.AbstractContextManager[tuple[str, int]]:
    """`tracer serve --config config`; `--workers` is left out where `workers` is None."""
    port = free_port()
    cmd = [sys.executable, "-m", "proxy.cli", "serve", "--config", str(config)]
    cmd += ["--port", str(port), "--log-level", "warning"]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    return http_server(cmd, port, "/healthz", "proxy", log)
