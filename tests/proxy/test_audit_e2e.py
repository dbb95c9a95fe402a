"""Live audit through a real proxy: it never delays a reply, and label drift trips the fallback."""

from __future__ import annotations

import logging
import re
import sqlite3
import time
from pathlib import Path

import httpx
import openai
import pytest

from proxy.sim.synthetic import INTENTS, make_intents
from proxy.sim.teacher import SimulatedTeacher, run_sim_teacher
from tests.support import intents_config, serve_fitted_intents

LABELS = sorted(INTENTS)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> tuple[Path, list[tuple[str, str]]]:
    """A model on the project's own intents, served as v0001 of task `intents`."""
    rows = make_intents(2000, seed=3)
    root = tmp_path_factory.mktemp("artifacts")
    serve_fitted_intents(root, rows[:1600])
    return root, rows


def ask(client: openai.OpenAI, text: str) -> tuple[str, str]:
    raw = client.chat.completions.with_raw_response.create(
        model="intents", messages=[{"role": "user", "content": text}]
    )
    return raw.headers["x-tracer-decision"], raw.parse().choices[0].message.content or ""


def test_audits_are_background_and_drift_triggers_fallback(fitted, tmp_path, caplog):
    artifacts, rows = fitted
    sim = SimulatedTeacher(dict(rows), labels=LABELS)
    unseen = [text for text, _ in rows[1600:]]
    with run_sim_teacher(sim) as teacher_url:
        task = {"target": 0.9, "confidence": 0.9, "audit_rate": 1.0}
        config = intents_config(teacher_url, tmp_path, artifacts, task=task)
        from proxy.app import create_app
        from proxy.sim.threaded import serve_in_thread

        app = create_app(config, refit=False)
        with serve_in_thread(app) as base:
            client = openai.OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0)
            state = app.state.tracer

            ask(client, unseen[-1])  # the openai client's first call builds its parsers
            # A slow teacher: handled replies must not wait for their audits.
            sim.configure(latency_s=1.0)
            handled_times = []
            for text in unseen[:40]:
                started = time.perf_counter()
                decision, _ = ask(client, text)
                if decision == "handled":
                    handled_times.append(time.perf_counter() - started)
            assert len(handled_times) >= 5
            assert max(handled_times) < 0.5, handled_times
            sim.configure(latency_s=0.0)
            deadline = time.monotonic() + 10
            checks = state.monitor.task("intents")
            while (state.auditor.jobs or not checks.version_audits) and time.monotonic() < deadline:
                time.sleep(0.05)
            audited = checks.version_audits
            # At most MAX_IN_FLIGHT audits wait on the slow teacher; the rest are skipped.
            assert 0 < audited <= len(handled_times) + 1
            assert state.fallback_reason("intents") is None

            # Label drift: the teacher now answers another intent for every class.
            sim.configure(
                relabel={a: b for a, b in zip(LABELS, LABELS[1:] + LABELS[:1], strict=True)}
            )
            with caplog.at_level(logging.WARNING, logger="tracer"):
                for text in unseen[40:400]:
                    ask(client, text)
                    if state.fallback_reason("intents") is not None:
                        break
                    time.sleep(0.01)  # let the audit land
            reason = state.fallback_reason("intents")
            assert reason is not None and "reached its threshold" in reason
            decisions = {ask(client, text)[0] for text, _ in rows[:30]}
            assert decisions == {"teacher"}
            metrics = httpx.get(f"{base}/metrics").text
    assert re.search(r'tracer_fallback_active\{task="intents"\} 1\.0', metrics)
    assert re.search(r'tracer_audits_total\{outcome="disagree",task="intents"\} [1-9]', metrics)
    assert re.search(r'tracer_live_agreement\{task="intents"\} 0\.\d+', metrics)
    drift = re.search(r'tracer_drift_score\{task="intents"\} (\S+)', metrics)
    assert drift is not None and float(drift.group(1)) >= 1.0
    assert any("back to the teacher" in r.getMessage() for r in caplog.records)
    assert sources_stored(tmp_path / "tracer.db")["audit"] >= audited


def sources_stored(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT source, count(*) FROM traces GROUP BY source"))


def test_a_young_task_samples_more_and_audits_do_not_count_as_avoided(fitted, tmp_path):
    artifacts, rows = fitted
    sim = SimulatedTeacher(dict(rows), labels=LABELS)
    with run_sim_teacher(sim) as teacher_url:
        task = {"audit_rate": 0.0, "audit_boost": 20, "probation_boost": 0}
        config = intents_config(teacher_url, tmp_path, artifacts, task=task)
        from proxy.app import create_app
        from proxy.sim.threaded import serve_in_thread

        app = create_app(config, refit=False)
        with serve_in_thread(app) as base:
            client = openai.OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0)
            state = app.state.tracer

            def metric(name: str, **labels: str) -> float:
                value = state.metrics.registry.get_sample_value(name, {"task": "intents", **labels})
                return float(value or 0.0)

            assert 'tracer_sampling_rate{task="intents"} 1.0' in httpx.get(f"{base}/metrics").text
            decisions = [ask(client, text)[0] for text, _ in rows[1600:1700]]
            answered = ("agree", "disagree", "invalid")
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # until every audit is answered and stored
                sources = sources_stored(tmp_path / "tracer.db")
                sampled = sources.get("audit", 0) + sources.get("explore", 0)
                audits = sum(metric("tracer_audits_total", outcome=o) for o in answered)
                counted = state.sampling.sampled["intents"] == sampled
                if not state.auditor.jobs and counted and sources.get("audit", 0) == audits:
                    break
                time.sleep(0.05)
            rate = metric("tracer_sampling_rate")
            avoided = metric("tracer_teacher_calls_avoided_total")
            failed = metric("tracer_audits_total", outcome="error")
    handled = decisions.count("handled")
    assert handled >= 10, decisions
    # Everything is sampled until there are 20 sampled traces, then 20 / sampled of it.
    assert 20 <= sampled <= 90, sources
    assert rate == pytest.approx(20 / sampled)
    assert audits == sources.get("audit", 0) > 0, sources
    assert avoided == handled - audits - failed  # an audit that failed still cost a call
