"""Shadow mode: the teacher answers everything, and the proxy says exactly what serving
would have done: the same decisions and the same agreement, request by request."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import openai
import pytest

from proxy.app import create_app
from proxy.sim.synthetic import INTENTS, make_intents
from proxy.sim.teacher import SimulatedTeacher, run_sim_teacher
from proxy.sim.threaded import serve_in_thread
from tests.support import intents_config, serve_fitted_intents

LABELS = sorted(INTENTS)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> tuple[Path, list[tuple[str, str]]]:
    rows = make_intents(1900, seed=5)
    root = tmp_path_factory.mktemp("artifacts")
    serve_fitted_intents(root, rows[:1600])
    return root, rows


def replay(teacher_url: str, root: Path, tmp: Path, mode: str, texts: list[str]):
    """Each text through a proxy in `mode`: (decision, shadow, content) per request, the
    decisions table, the traces' sources and the metrics."""
    tmp.mkdir()
    config = intents_config(teacher_url, tmp, root, task={"mode": mode, "audit_rate": 0.0,
                            "audit_boost": 0, "probation_boost": 0})  # fmt: skip
    app = create_app(config, refit=False)
    with serve_in_thread(app) as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0)
        out = []
        for text in texts:
            raw = client.chat.completions.with_raw_response.create(
                model="intents", messages=[{"role": "user", "content": text}]
            )
            content = raw.parse().choices[0].message.content
            out.append((raw.headers["x-tracer-decision"], raw.headers.get("x-tracer-shadow"),
                        content))  # fmt: skip
        client.close()
        db = tmp / "tracer.db"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with sqlite3.connect(db) as conn:
                rows = conn.execute(
                    "SELECT input, decision, shadow, shadow_agrees FROM decisions ORDER BY id"
                ).fetchall()
                sources = dict(conn.execute("SELECT source, count(*) FROM traces GROUP BY source"))
            if len(rows) == len(texts):
                break
            time.sleep(0.05)
        registry = app.state.tracer.metrics.registry

        def metric(name: str, **labels: str) -> float:
            return registry.get_sample_value(name, {"task": "intents", **labels}) or 0.0

        figures = {
            "would_handle": metric("tracer_shadow_requests_total", would="handled"),
            "agree": metric("tracer_shadow_checks_total", outcome="agree"),
            "savable": metric("tracer_shadow_cost_savable_usd_total"),
        }
    return out, rows, sources, figures


def test_shadow_figures_are_what_serving_does_on_the_same_stream(fitted, tmp_path):
    root, rows = fitted
    texts = [t for t, _ in rows[1600:1900]]
    # A teacher that errs on a fixed share of inputs: agreement below 1, the same each run.
    sim = SimulatedTeacher(dict(rows), labels=LABELS, noise_by_label=dict.fromkeys(LABELS, 0.1))
    with run_sim_teacher(sim) as url:
        shadow, shadow_rows, sources, figures = replay(url, root, tmp_path / "s", "shadow", texts)
        served, _, _, _ = replay(url, root, tmp_path / "v", "serve", texts)

    teacher_says = [content for _, _, content in shadow]
    assert {d for d, _, _ in shadow} == {"teacher"}  # the teacher answered every request
    assert [s for _, s, _ in shadow] == [d for d, _, _ in served]  # would-be == did
    handled = [i for i, (d, _, _) in enumerate(served) if d == "handled"]
    assert 30 <= len(handled) < len(texts)
    agreed = sum(served[i][2] == teacher_says[i] for i in handled)
    assert agreed < len(handled)  # the noisy teacher makes this a real comparison
    would = {r[0]: r for r in shadow_rows}
    assert sum(bool(would[texts[i]][3]) for i in handled) == agreed
    assert all(would[texts[i]][3] is None for i in range(len(texts)) if i not in handled)
    assert figures["would_handle"] == len(handled) and figures["agree"] == agreed
    assert sources == {"teacher": len(texts)}  # every answer samples the traffic
