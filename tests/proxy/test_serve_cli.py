"""`tracer serve` and `tracer traces export` as a user runs them, in real processes.

Also the canary: an upstream key that must reach the upstream and nowhere else.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from proxy.sim.teacher import SimulatedTeacher, run_sim_teacher
from tests.support import ANSWERS, LABELS, free_port

CANARY = "sk-canary-7f3a9c1e5b2d4f60a8e1"


def write_config(path: Path, teacher_url: str, db: Path, port: int) -> None:
    path.write_text(
        f"""
model_list:
  - model_name: teacher-model
    litellm_params:
      model: openai/teacher-model
      api_key: os.environ/CANARY_UPSTREAM_KEY
      api_base: {teacher_url}
tasks:
  - name: banking
    match: {{model: banking-intent}}
    teacher: teacher-model
    labels: {json.dumps(LABELS)}
server: {{port: {port}}}
store: {{url: "sqlite+aiosqlite:///{db}"}}
"""
    )


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"tracer serve exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError("tracer serve did not become ready")


def assert_idle_connection_outlives_client_pools(port: int) -> None:
    """An idle keep-alive connection is still open after httpx's 5 s pool expiry.

    At equal timeouts a client can send on a socket the server is just closing.
    """
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/healthz")
        assert conn.getresponse().read() and conn.sock is not None
        first = conn.sock
        time.sleep(5.5)
        conn.request("GET", "/healthz")  # on the same socket: no reconnect in between
        assert conn.getresponse().status == 200 and conn.sock is first
    finally:
        conn.close()


def test_canary_key_reaches_the_upstream_and_nothing_else(tmp_path):
    sim = SimulatedTeacher(ANSWERS, labels=LABELS, require_key=CANARY)
    db, config, log = tmp_path / "t.db", tmp_path / "config.yaml", tmp_path / "serve.log"
    port = free_port()
    with run_sim_teacher(sim) as teacher_url:
        write_config(config, teacher_url, db, port)
        env = {**os.environ, "CANARY_UPSTREAM_KEY": CANARY}
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "proxy.cli", "serve", "--config", str(config),
                 "--log-level", "debug", "--access-log"],
                stdout=out, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
            try:
                url = f"http://127.0.0.1:{port}"
                wait_ready(url, proc)
                client = openai.OpenAI(base_url=f"{url}/v1", api_key="client", max_retries=0)
                bodies = []
                for model in ["banking-intent", "teacher-model"]:
                    reply = client.chat.completions.create(
                        model=model,
                        messages=[{"role": "user", "content": "i lost my card yesterday"}],
                    )
                    bodies.append(reply.model_dump_json())
                # An upstream that rejects the key: its error text must come back scrubbed.
                sim.configure(require_key="another-key")
                with pytest.raises(openai.AuthenticationError) as rejected:
                    client.chat.completions.create(
                        model="banking-intent", messages=[{"role": "user", "content": "hi"}]
                    )
                bodies.append(str(rejected.value.body))
                sim.configure(error_rate=1.0, error_status=500, require_key=None)
                with pytest.raises(openai.APIStatusError):
                    client.chat.completions.create(
                        model="teacher-model", messages=[{"role": "user", "content": "hi"}]
                    )
                bodies.append(httpx.get(f"{url}/metrics").text)
                assert_idle_connection_outlives_client_pools(port)
            finally:
                proc.terminate()
                proc.wait(timeout=20)
        # uvicorn shuts down gracefully, then re-raises the signal it caught.
        assert proc.returncode in (0, -15), log.read_text()
        assert "Application shutdown complete" in log.read_text()
        assert f"Bearer {CANARY}" in sim.stats()["auth_headers"]
        for i, body in enumerate(bodies):
            assert CANARY not in body, f"canary in response {i}"
        assert CANARY not in log.read_text()
        for path in tmp_path.iterdir():
            assert CANARY.encode() not in path.read_bytes(), f"canary in {path.name}"
        assert b"lost_or_stolen_card" in db.read_bytes()

        export = ["traces", "export", "banking", "--config", str(config)]
        result = subprocess.run(
            [sys.executable, "-m", "proxy.cli", *export],
            capture_output=True, text=True, env=env, timeout=60,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["input"], r["label"]) for r in lines] == [
        ("i lost my card yesterday", "lost_or_stolen_card")
    ]
    assert "exported 1 traces" in result.stderr
    assert CANARY not in result.stdout + result.stderr


def test_a_second_sigint_during_shutdown_still_flushes_every_trace(tmp_path):
    """While the store is locked, traces queue up (more than one batch of 500); two
    Ctrl-Cs must not abandon them: every answered request's trace is written."""
    import signal
    import sqlite3
    from concurrent.futures import ThreadPoolExecutor

    sim = SimulatedTeacher(ANSWERS, labels=LABELS)
    db, config, log = tmp_path / "t.db", tmp_path / "config.yaml", tmp_path / "serve.log"
    port = free_port()
    with run_sim_teacher(sim) as teacher_url:
        write_config(config, teacher_url, db, port)
        env = {**os.environ, "CANARY_UPSTREAM_KEY": "k"}
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "proxy.cli", "serve", "--config", str(config)],
                stdout=out, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
            url = f"http://127.0.0.1:{port}"
            wait_ready(url, proc)
            texts = list(ANSWERS)
            lock = sqlite3.connect(db, isolation_level=None, timeout=30)
            lock.execute("BEGIN EXCLUSIVE")

            def send(start: int) -> int:
                ok = 0
                with httpx.Client(timeout=30) as client:
                    for i in range(start, 800, 8):
                        text = f"{texts[i % len(texts)]} {i}"
                        body = {
                            "model": "banking-intent",
                            "messages": [{"role": "user", "content": text}],
                        }
                        r = client.post(f"{url}/v1/chat/completions", json=body)
                        ok += r.status_code == 200
                return ok

            with ThreadPoolExecutor(8) as pool:
                answered = sum(pool.map(send, range(8)))
            assert answered == 800
            # A request in flight makes shutdown wait for its connection, as on a busy
            # server: the second Ctrl-C then lands before the application's shutdown.
            sim.configure(latency_s=20.0)
            slow = ThreadPoolExecutor(1)
            slow.submit(send, 7)
            time.sleep(0.5)
            proc.send_signal(signal.SIGINT)
            time.sleep(0.3)
            proc.send_signal(signal.SIGINT)
            time.sleep(2.0)
            lock.execute("COMMIT")
            lock.close()
            proc.wait(timeout=90)
            slow.shutdown(wait=True, cancel_futures=True)
    with sqlite3.connect(db) as conn:
        stored = conn.execute("select count(*) from traces").fetchone()[0]
    assert stored == 800, log.read_text()[-3000:]
