"""/healthz says "degraded" when the store is (still 200: liveness); /readyz is 503 when
the store does not answer or its queue is full, and says why."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import yaml

from proxy.app import create_app
from proxy.metrics import Metrics
from proxy.server import uvicorn_options
from proxy.sim.threaded import serve_in_thread
from tests.support import proxy_config


def test_health_and_readiness_follow_the_store(tmp_path, monkeypatch):
    config = proxy_config("http://127.0.0.1:9/v1", tmp_path / "t.db")
    app = create_app(config)
    state = app.state.tracer
    writer = state.writer
    options = uvicorn_options(keep_alive_s=5, read_timeout_s=5)
    with serve_in_thread(app, name="tracer-health", **options) as root:
        health = httpx.get(f"{root}/healthz")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        ready = httpx.get(f"{root}/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready", ready.text

        writer.last_dropped_at = time.time()
        health = httpx.get(f"{root}/healthz")
        assert health.status_code == 200 and health.json()["status"] == "degraded"
        assert any("dropped" in p for p in health.json()["problems"]), health.text
        assert httpx.get(f"{root}/readyz").status_code == 200  # dropped, but the store answers

        writer.last_dropped_at = None
        writer.last_error, writer.last_error_at = "OperationalError: disk I/O error", time.time()
        health = httpx.get(f"{root}/healthz").json()
        assert health["problems"] == ["the last write failed: OperationalError: disk I/O error"]
        writer.last_write_ok_at = time.time() + 1  # a later write went through
        assert httpx.get(f"{root}/healthz").json()["status"] == "ok"

        with monkeypatch.context() as patch:
            patch.setattr(type(writer), "full", property(lambda self: True))
            ready = httpx.get(f"{root}/readyz")
            assert ready.status_code == 503
            assert ready.json()["reasons"] == [
                f"the write queue is full ({writer.queue_size} records)"
            ]

        with monkeypatch.context() as patch:
            patch.setattr(type(state.engine), "connect", lambda self: _Refusing())
            ready = httpx.get(f"{root}/readyz")
        assert ready.status_code == 503, ready.text
        assert ready.json()["reasons"] == [
            "the store does not answer: OSError: unable to open database file"
        ]
        assert httpx.get(f"{root}/readyz").status_code == 200


class _Refusing:
    """An engine connection that cannot be opened."""

    async def __aenter__(self) -> None:
        raise OSError("unable to open database file")

    async def __aexit__(self, *exc: object) -> None:
        return None


def test_the_example_alert_rules_name_metrics_the_proxy_exports():
    path = Path(__file__).resolve().parents[2] / "docs" / "alerts.yml"
    rules = yaml.safe_load(path.read_text(encoding="utf-8"))["groups"][0]["rules"]
    exported = {m.name for m in Metrics().registry.collect()}
    for rule in rules:
        assert {"alert", "expr", "labels", "annotations"} <= set(rule), rule
        for name in re.findall(r"\btracer_\w+", rule["expr"]):
            base = re.sub(r"_(total|count|sum|bucket)$", "", name)
            assert base in exported, (rule["alert"], name)
