"""/v1/classify and /tasks/{task}/report through a real proxy with a deployed model."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import httpx
import openai
import pytest

from proxy.config import parse_config
from proxy.sim.synthetic import INTENTS, make_intents
from proxy.sim.teacher import SimulatedTeacher, run_sim_teacher
from tests.support import intents_config, running_proxy, serve_fitted_intents

LABELS = sorted(INTENTS)
KEY = "client-key-for-reports"
# Nothing like the banking intents: the surrogate should send these to the teacher.
ODD = [
    ("what's the weather like in lisbon next tuesday", None),
    ("recommend a good thriller novel set in iceland", None),
    ("how many legs does a spider have", None),
    ("play some jazz in the living room", None),
]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    rows = make_intents(1800, seed=5)
    root = tmp_path_factory.mktemp("artifacts")
    serve_fitted_intents(root, rows[:1500])
    sim = SimulatedTeacher(dict(rows), labels=LABELS)
    tmp = tmp_path_factory.mktemp("proxy")
    with run_sim_teacher(sim) as teacher_url:
        task = {"prompt": "Classify the banking question.", "audit_rate": 0.0}
        config = intents_config(teacher_url, tmp, root, task=task, server={"api_keys": [KEY]})
        with running_proxy(config) as url:
            yield url.removesuffix("/v1"), rows[1500:], tmp / "tracer.db", sim


def test_classify_answers_from_either_side_and_names_the_cluster(served):
    base, unseen, db, _ = served
    auth = {"Authorization": f"Bearer {KEY}"}
    seen = set()
    for text, label in ODD + unseen[:56]:
        reply = httpx.post(
            f"{base}/v1/classify", json={"task": "intents", "input": text}, headers=auth
        )
        assert reply.status_code == 200
        body = reply.json()
        assert set(body) >= {"label", "decision", "accept_score", "model", "reason"}
        assert body["decision"] in {"handled", "deferred"}
        assert "cluster" in body["reason"]
        if body["decision"] == "handled":
            assert body["model"] == "intents@v0001"
        else:
            assert body["model"] == "teacher"  # the teacher's answer
            assert body["label"] == label if label else body["label"] in LABELS
        seen.add(body["decision"])
    assert seen == {"handled", "deferred"}
    bad = httpx.post(f"{base}/v1/classify", json={"task": "nope", "input": "x"}, headers=auth)
    assert bad.status_code == 404 and bad.json()["error"]["code"] == "task_not_found"
    empty = httpx.post(f"{base}/v1/classify", json={"task": "intents", "input": " "}, headers=auth)
    assert empty.status_code == 400
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with sqlite3.connect(db) as conn:
            reasons = [r[0] for r in conn.execute("SELECT reason FROM decisions")]
        if len(reasons) >= 60:
            break
        time.sleep(0.1)
    assert len(reasons) >= 60 and all("cluster" in r for r in reasons)


def test_chat_answer_headers_and_body_say_how_it_was_routed(served):
    base, unseen, _, _ = served
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0)
    decisions = set()
    models = set()  # the body's `model`: the teacher's, whoever answered
    for text, _ in ODD + unseen[60:116]:
        raw = client.chat.completions.with_raw_response.create(
            model="intents", messages=[{"role": "user", "content": text}]
        )
        decision = raw.headers["x-tracer-decision"]
        decisions.add(decision)
        assert raw.headers["x-tracer-model-version"] == "v0001"
        assert float(raw.headers["x-tracer-accept-score"]) >= 0
        body = raw.http_response.json()
        models.add(body["model"])
        if decision == "handled":
            assert body["tracer"]["decision"] == "handled"
            assert body["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    assert decisions == {"handled", "deferred"}
    assert len(models) == 1 and "intents" not in models, models
    # Streamed, a handled answer is a proper SSE stream that ends in [DONE].
    text = next(t for t, _ in unseen if client.chat.completions.with_raw_response.create(
        model="intents", messages=[{"role": "user", "content": t}]
    ).headers["x-tracer-decision"] == "handled")  # fmt: skip
    with httpx.stream(
        "POST",
        f"{base}/v1/chat/completions",
        json={"model": "intents", "stream": True, "messages": [{"role": "user", "content": text}]},
        headers={"Authorization": f"Bearer {KEY}"},
    ) as reply:
        events = [line for line in reply.iter_lines() if line]
    assert events[-1] == "data: [DONE]" and reply.headers["x-tracer-decision"] == "handled"
    # Requests the surrogate cannot honour are deferred whatever the score.
    raw = client.chat.completions.with_raw_response.create(
        model="intents", n=2, messages=[{"role": "user", "content": text}]
    )
    assert raw.headers["x-tracer-decision"] == "deferred" and len(raw.parse().choices) == 2


def test_report_route_serves_the_latest_report_behind_the_key(served):
    base = served[0]
    assert httpx.get(f"{base}/tasks/intents/report").status_code == 401
    auth = {"Authorization": f"Bearer {KEY}"}
    page = httpx.get(f"{base}/tasks/intents/report", headers=auth)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "Clusters" in page.text and page.headers["x-tracer-model-version"] == "v0001"
    assert page.headers["x-content-type-options"] == "nosniff"
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp
    data = httpx.get(f"{base}/tasks/intents/report?format=json", headers=auth).json()
    assert data["version"] == "v0001" and data["clusters"]
    missing = httpx.get(f"{base}/tasks/other/report", headers=auth)
    assert missing.status_code == 404


def test_report_is_missing_until_a_fit_wrote_one(tmp_path: Path, teacher):
    raw = {
        "model_list": [
            {"model_name": "t", "litellm_params": {"model": "openai/t", "api_base": teacher[1]}}
        ],
        "tasks": [{"name": "fresh", "match": {"model": "fresh"}, "teacher": "t"}],
        "store": {"url": f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}"},
        "artifacts": {"dir": str(tmp_path / "artifacts")},
    }
    with running_proxy(parse_config(raw, env={})) as url:
        reply = httpx.get(url.removesuffix("/v1") + "/tasks/fresh/report")
    assert reply.status_code == 404 and reply.json()["error"]["code"] == "report_not_found"
