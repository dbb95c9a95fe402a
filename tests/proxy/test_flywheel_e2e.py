"""The whole loop, live: cold start, first deployment, a second swap, nothing dropped.

A real proxy (uvicorn, LiteLLM, SQLite, child-process fits) in front of a simulated
teacher, driven by the official openai client from several threads at once.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai

from proxy.audit import MAX_IN_FLIGHT
from proxy.models import ModelStore
from proxy.sim.synthetic import INTENTS, make_intents
from proxy.sim.teacher import SimulatedTeacher, run_sim_teacher
from tests.support import intents_config, running_proxy

LABELS = sorted(INTENTS)


class Driver:
    """Sends a labelled stream through the proxy until told to stop; records everything."""

    def __init__(self, url: str, rows: list[tuple[str, str]]) -> None:
        self.client = openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=30)
        self.rows = rows
        self.lock = threading.Lock()
        self.sent = 0
        self.failures: list[str] = []
        self.outcomes: list[tuple[str, str | None, bool]] = []  # (decision, version, agrees)
        self.stop = threading.Event()

    def next_row(self) -> tuple[str, str]:
        with self.lock:
            row = self.rows[self.sent % len(self.rows)]  # wraps: repeats are traffic too
            self.sent += 1
            return row

    def worker(self) -> None:
        while not self.stop.is_set():
            text, label = self.next_row()
            try:
                raw = self.client.chat.completions.with_raw_response.create(
                    model="intents", messages=[{"role": "user", "content": text}]
                )
                reply = raw.parse()
                decision = raw.headers.get("x-tracer-decision", "?")
                version = raw.headers.get("x-tracer-model-version")
                agrees = reply.choices[0].message.content == label
                with self.lock:
                    self.outcomes.append((decision, version, agrees))
            except Exception as exc:  # any failure at all is what this test is about
                with self.lock:
                    self.failures.append(f"{type(exc).__name__}: {exc}")


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_cold_start_to_first_deployment_to_second_swap(tmp_path):
    rows = make_intents(3000, seed=7)
    sim = SimulatedTeacher(dict(rows), labels=LABELS)
    with run_sim_teacher(sim) as teacher_url:
        task = {"target": 0.85, "confidence": 0.9, "min_coverage": 0.05}
        refit = {"min_new_traces": 500, "interval_seconds": 3600}
        config = intents_config(teacher_url, tmp_path, task=task, refit=refit)
        with running_proxy(config) as url:
            models = ModelStore(tmp_path / "artifacts")
            driver = Driver(url, rows)
            with ThreadPoolExecutor(4) as pool:
                for _ in range(4):
                    pool.submit(driver.worker)
                wait_for(lambda: models.current("intents") == "v0001", 240, "first deployment")
                # A refit that certifies less than v0001 is kept out (not_better): wait
                # for the next version that is swapped in, whichever it is.
                wait_for(
                    lambda: models.current("intents") not in (None, "v0001"), 240, "second swap"
                )
                second = models.current("intents")
                seen_after = len(driver.outcomes)
                wait_for(lambda: len(driver.outcomes) > seen_after + 100, 60, "traffic after swap")
                driver.stop.set()
            metrics = httpx.get(url.removesuffix("/v1") + "/metrics").text

    assert driver.failures == [], driver.failures[:5]
    decisions = Counter(d for d, _, _ in driver.outcomes)
    versions = {v for _, v, _ in driver.outcomes if v}
    assert decisions["teacher"] > 0, decisions  # cold start: the teacher answers
    assert decisions["handled"] > 0, decisions  # coverage above 0 once a model is live
    assert {"v0001", second} <= versions, versions
    after_swap = [o for o in driver.outcomes[seen_after:] if o[1] == second]
    assert after_swap and any(d == "handled" for d, _, _ in after_swap)
    handled = [agrees for d, _, agrees in driver.outcomes if d == "handled"]
    assert sum(handled) / len(handled) >= 0.85
    assert f'tracer_model_info{{task="intents",version="{second}"}} 1.0' in metrics
    assert 'version="v0001"' not in metrics
    assert re.search(r'tracer_refits_total\{outcome="deployed",task="intents"\} [2-9]\.0', metrics)
    # A handled request avoided its teacher call unless it was audited; audits still in
    # flight when the metrics were read are not counted yet.
    avoided = re.search(r'tracer_teacher_calls_avoided_total\{task="intents"\} (\S+)', metrics)
    audits = sum(
        float(m)
        for m in re.findall(
            r'tracer_audits_total\{outcome="(?!skipped)\w+",task="intents"\} (\S+)', metrics
        )
    )
    assert avoided and audits > 0
    upper = decisions["handled"] - audits
    assert upper - MAX_IN_FLIGHT <= float(avoided.group(1)) <= upper
    assert re.search(r'tracer_model_calibration_agreement\{task="intents"\} 0\.\d+|1\.0', metrics)
