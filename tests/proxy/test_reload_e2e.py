"""`kill -HUP` on a running `tracer serve`: a task switches from shadow to serve, in place.

A real `tracer serve` process, a served model (conftest's `fitted_intents`), a
simulated teacher. The config file is edited and the process sent SIGHUP: the next
requests are answered locally, and the change is logged.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from proxy.sim.synthetic import INTENTS, make_intents
from proxy.sim.teacher import SimulatedTeacher, run_sim_teacher
from tests.proxy.test_serve_cli import wait_ready
from tests.support import free_port

REPO = Path(__file__).resolve().parents[2]
ROWS = make_intents(600, seed=2)  # what `fitted_intents` was fitted on: it handles them


def config_text(teacher_url: str, tmp: Path, port: int, mode: str) -> str:
    return f"""
model_list:
  - model_name: teacher
    litellm_params: {{model: openai/teacher, api_key: k, api_base: "{teacher_url}"}}
tasks:
  - name: intents
    match: {{model: intents}}
    teacher: teacher
    labels: {json.dumps(sorted(INTENTS))}
    mode: {mode}
    audit_boost: 0
    probation_boost: 0
    audit_rate: 0
server: {{port: {port}}}
store: {{url: "sqlite+aiosqlite:///{tmp / "tracer.db"}"}}
artifacts: {{dir: "{tmp / "artifacts"}"}}
refit: {{min_new_traces: 1000000, interval_seconds: 1000000}}
"""


def ask(base: str, text: str) -> httpx.Response:
    body = {"model": "intents", "messages": [{"role": "user", "content": text}]}
    return httpx.post(f"{base}/v1/chat/completions", json=body, timeout=30)


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
def test_sighup_switches_a_task_from_shadow_to_serve(fitted_intents: Path, tmp_path: Path):
    shutil.copytree(fitted_intents, tmp_path / "artifacts")
    port, config = free_port(), tmp_path / "config.yaml"
    with run_sim_teacher(SimulatedTeacher(dict(ROWS), labels=sorted(INTENTS))) as teacher_url:
        config.write_text(config_text(teacher_url, tmp_path, port, "shadow"))
        log = (tmp_path / "serve.log").open("w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "proxy.cli", "serve", "--config", str(config)],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={**os.environ},
        )  # fmt: skip
        try:
            base = f"http://127.0.0.1:{port}"
            wait_ready(base, proc)
            texts = [t for t, _ in ROWS[:40]]
            shadowed = [ask(base, t) for t in texts]
            assert {r.headers["x-tracer-decision"] for r in shadowed} == {"teacher"}
            would = [r.headers.get("x-tracer-shadow") for r in shadowed]
            assert "handled" in would, would

            config.write_text(config_text(teacher_url, tmp_path, port, "serve"))
            proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            served = shadowed
            while time.monotonic() < deadline:
                served = [ask(base, t) for t in texts]
                if any(r.headers["x-tracer-decision"] == "handled" for r in served):
                    break
                time.sleep(0.2)
            assert proc.poll() is None, "SIGHUP must not stop the server"
            decisions = [r.headers["x-tracer-decision"] for r in served]
            # What shadow mode said it would handle is what serving now handles.
            assert decisions == ["handled" if w == "handled" else "deferred" for w in would]
            assert all("x-tracer-shadow" not in r.headers for r in served)
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(30)
            log.close()
    assert "mode shadow -> serve" in (tmp_path / "serve.log").read_text()
