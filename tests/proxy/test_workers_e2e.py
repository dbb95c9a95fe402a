"""`tracer serve --workers 2`, as a user runs it: one port, two processes, one set of metrics.

The requests of both workers are counted once each in `/metrics`; a single refit (the
store's lease: one fitter per task) gives a version that both workers serve within
seconds, each showing it in `tracer_model_info` under its own pid; and the server stops
on SIGTERM with both workers' shutdowns complete.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from itertools import pairwise
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from proxy.sim.synthetic import make_intents
from proxy.sim.teacher import SimulatedTeacher, run_sim_teacher
from tests.proxy.test_serve_cli import wait_ready
from tests.support import INTENT_LABELS, free_port

TASK = "intents"
N_FIT = 600


def write_config(path: Path, teacher_url: str, port: int) -> None:
    path.write_text(
        f"""
model_list:
  - model_name: teacher
    litellm_params: {{model: openai/teacher, api_key: k, api_base: "{teacher_url}"}}
tasks:
  - name: {TASK}
    match: {{model: {TASK}}}
    teacher: teacher
    labels: {json.dumps(INTENT_LABELS)}
    target: 0.9
    confidence: 0.9
    min_coverage: 0.05
server: {{port: {port}, workers: 1}}
store: {{url: "sqlite+aiosqlite:///tracer.db"}}
artifacts: {{dir: artifacts}}
refit: {{min_new_traces: {N_FIT}, interval_seconds: 3600}}
"""
    )


def samples(url: str, name: str) -> list[tuple[dict[str, str], float]]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def total(url: str, name: str) -> float:
    return sum(value for _, value in samples(url, name))


def serving_pids(url: str) -> dict[str, set[str]]:
    """version -> the pids of the workers that serve it."""
    pids: dict[str, set[str]] = defaultdict(set)
    for labels, value in samples(url, "tracer_model_info"):
        if value == 1:
            pids[labels["version"]].add(labels["pid"])
    return pids


def ask(url: str, text: str) -> tuple[str, str | None]:
    # A new connection each time: the kernel hands connections to either worker.
    reply = httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": TASK, "messages": [{"role": "user", "content": text}]},
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    return reply.headers["x-tracer-decision"], reply.headers.get("x-tracer-model-version")


def wait_for(condition, timeout_s: float, what: str) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, f"timed out waiting for {what}"
        time.sleep(0.25)
    return time.monotonic() - started


def test_two_workers_share_the_port_the_metrics_the_store_and_one_refit(tmp_path: Path):
    rows = make_intents(N_FIT + 100, seed=6)
    sim = SimulatedTeacher(dict(rows), labels=INTENT_LABELS)
    port, config, log = free_port(), tmp_path / "config.yaml", tmp_path / "serve.log"
    url = f"http://127.0.0.1:{port}"
    with run_sim_teacher(sim) as teacher_url, log.open("wb") as out:
        write_config(config, teacher_url, port)
        proc = subprocess.Popen(
            [sys.executable, "-m", "proxy.cli", "serve", "--config", str(config),
             "--workers", "2"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_ready(url, proc, timeout=120)
            with ThreadPoolExecutor(4) as pool:
                answers = list(pool.map(lambda r: ask(url, r[0]), rows[:N_FIT]))
            assert {decision for decision, _ in answers} == {"teacher"}
            # Each request counted once, whichever worker served it.
            wait_for(lambda: total(url, "tracer_requests_total") == N_FIT, 10, "the counters")
            assert samples(url, "tracer_requests_total") == [
                ({"task": TASK, "decision": "teacher"}, N_FIT)
            ]
            wait_for(lambda: total(url, "tracer_traces_stored_total") == N_FIT, 30, "traces")

            # One fit, by whichever worker takes the lease; both then serve its version.
            wait_for(lambda: serving_pids(url).get("v0001"), 300, "the first fit")
            took = wait_for(lambda: len(serving_pids(url).get("v0001", ())) == 2, 30, "both")
            assert took < 10, took
            later = [ask(url, text) for text, _ in rows[N_FIT:]]
            assert {version for _, version in later} == {"v0001"}
            assert total(url, "tracer_requests_total") == N_FIT + len(later)
            assert total(url, "tracer_requests_in_flight") == 1  # the /metrics request itself
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=60)
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert text.count("Application shutdown complete") == 2, text[-3000:]

    with sqlite3.connect(tmp_path / "tracer.db") as db:
        refits = db.execute("SELECT outcome, seconds, created_at FROM refits").fetchall()
        published = db.execute("SELECT version, state FROM model_versions").fetchall()
        pointer = db.execute("SELECT version FROM model_pointers WHERE task = ?", (TASK,))
        served = pointer.fetchall()
    assert [outcome for outcome, _, _ in refits].count("deployed") == 1, refits
    ends = [(datetime.fromisoformat(created), seconds) for _, seconds, created in refits]
    spans = sorted((end - timedelta(seconds=seconds), end) for end, seconds in ends)
    for (_, end), (start, _) in pairwise(spans):
        assert end <= start, spans  # never two fits of the task at once
    assert ("v0001", "published") in published and served == [("v0001",)]
