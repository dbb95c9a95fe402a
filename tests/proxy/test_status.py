"""`tracer status`: per task, the served version and its certificate, live figures over the
last hour and day, the fallback verdict replayed from the store, refits and traces."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy import status as status_module
from proxy import store
from proxy.cli import main
from proxy.models import ModelStore
from proxy.sim.synthetic import make_intents
from tests.support import INTENT_LABELS, serve_fitted_intents


def write_config(tmp: Path) -> Path:
    raw = {
        "model_list": [
            {"model_name": "teacher", "litellm_params": {"model": "openai/teacher", "api_key": "k"}}
        ],
        "tasks": [
            {
                "name": "intents",
                "match": {"model": "intents"},
                "teacher": "teacher",
                "labels": INTENT_LABELS,
                "target": 0.9,
                "confidence": 0.9,
            },
            {"name": "quiet", "match": {"model": "quiet"}, "teacher": "teacher", "mode": "shadow"},
        ],
        "store": {"url": f"sqlite+aiosqlite:///{tmp / 'tracer.db'}"},
        "artifacts": {"dir": str(tmp / "artifacts")},
    }
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def write(tmp: Path, records: list[store.Record], refits: list[dict[str, Any]] = ()) -> None:
    """Rows as the proxy writes them: through the store's writer (and its refit record)."""

    async def go() -> None:
        engine = store.create_engine(f"sqlite+aiosqlite:///{tmp / 'tracer.db'}")
        await store.create_schema(engine)
        writer = store.StoreWriter(engine, linger_s=0.0)
        writer.start()
        for record in records:
            writer.submit(record)
        await writer.close()
        for refit in refits:
            await store.record_refit(engine, **refit)
        await engine.dispose()

    asyncio.run(go())


def decision(kind: str, at: datetime, version: str | None = "v0001") -> store.Decision:
    return store.Decision(
        task="intents", decision=kind, reason="r", latency_ms=1.0, model_version=version,
        ood=False, created_at=at, lane="surrogate" if kind == "handled" else "teacher",
    )  # fmt: skip


def audit(agrees: bool, at: datetime) -> store.Audit:
    return store.Audit(task="intents", version="v0001", agrees=agrees, created_at=at)


def trace(source: str, label: str | None = "balance") -> store.Trace:
    return store.Trace(
        task="intents", input=f"text {source}", label=label, raw_output=label or "?",
        model="teacher", latency_ms=1.0, source=source,  # type: ignore[arg-type]
    )  # fmt: skip


def status(capsys: pytest.CaptureFixture[str], cfg: Path, *extra: str) -> tuple[int, str]:
    code = main(["status", "--config", str(cfg), *extra])
    return code, capsys.readouterr().out


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("artifacts")
    serve_fitted_intents(root, make_intents(800, seed=2))
    return root


@pytest.fixture
def cfg(tmp_path: Path, artifacts: Path) -> Path:
    (tmp_path / "artifacts").symlink_to(artifacts, target_is_directory=True)
    return write_config(tmp_path)


def test_status_reports_the_served_version_live_figures_refits_and_traces(
    tmp_path, cfg, capsys, monkeypatch
):
    now = datetime.now(UTC)
    recent, earlier, old = (
        now - timedelta(minutes=10),
        now - timedelta(hours=5),
        now - timedelta(days=3),
    )
    records: list[store.Record] = [decision("handled", old) for _ in range(50)]  # > a day ago
    records += [decision("teacher", earlier, None) for _ in range(10)]
    records += [decision("handled", recent) for _ in range(6)]
    records += [decision("deferred", recent) for _ in range(4)]
    records += [audit(True, recent)] * 3 + [audit(False, recent), audit(True, earlier)]
    records += [audit(True, earlier)]
    records += [trace("import"), trace("import"), trace("teacher"), trace("teacher", None)]
    records += [trace("explore")]
    refit = {"task": "intents", "outcome": "deployed", "version": "v0001", "n_traces": 800,
             "last_trace_id": 5, "reason": None, "seconds": 3.5}  # fmt: skip
    write(tmp_path, records, [refit])

    code, out = status(capsys, cfg, "--json")
    assert code == 0
    intents, quiet = json.loads(out)
    manifest = ModelStore(tmp_path / "artifacts").manifest("intents", "v0001")
    assert manifest is not None and manifest.calibration is not None
    served = intents["served"]
    assert served["version"] == "v0001" and served["target"] == 0.9
    assert served["certified_coverage"] == manifest.calibration.coverage
    assert served["calibration_agreement"] == manifest.calibration.agreement
    hour, day = intents["live"]["hour"], intents["live"]["day"]
    assert (hour["requests"], hour["handled"], hour["coverage"]) == (10, 6, 0.6)
    assert (hour["audits"], hour["agreement"]) == (4, 0.75)
    assert (day["requests"], day["handled"], day["teacher"], day["coverage"]) == (20, 6, 10, 0.3)
    assert (day["audits"], day["agreed"]) == (6, 5)
    fallback = intents["fallback"]
    assert fallback["state"] == "serving" and fallback["audits"] == 6
    assert fallback["agreement"] == pytest.approx(5 / 6) and not fallback["shift_alarm"]
    expected = manifest.calibration.unusual_share or manifest.calibration.ood_share
    assert fallback["unusual_expected"] == pytest.approx(expected, abs=1e-4)
    assert intents["last_refit"]["outcome"] == "deployed"
    assert intents["last_refit"]["version"] == "v0001"
    assert intents["traces"] == {
        "explore": {"valid": 1, "invalid": 0},
        "import": {"valid": 2, "invalid": 0},
        "teacher": {"valid": 1, "invalid": 1},
    }
    assert quiet["served"] is None and quiet["fallback"]["state"] == "teacher"
    assert quiet["live"]["day"]["requests"] == 0 and quiet["traces"] == {}

    code, text = status(capsys, cfg)
    assert code == 0
    assert "task intents (serve, target 0.9, confidence 0.9)" in text
    assert "v0001" in text and "state         serving" in text
    assert "last refit    deployed v0001" in text
    assert "traces        explore 1, import 2, teacher 1 (+1 invalid)" in text
    assert "task quiet (shadow" in text and "nothing yet" in text

    # The windows read a task's newest rows only, and say when a window holds more.
    monkeypatch.setattr(status_module, "MAX_ROWS", 4)
    code, out = status(capsys, cfg, "--json", "--task", "intents")
    day = json.loads(out)[0]["live"]["day"]
    assert day["requests"] == 4 and day["cut_short"] and not day["teacher"]


def test_status_derives_a_demotion_from_the_served_versions_audits(tmp_path, cfg, capsys):
    now = datetime.now(UTC)
    write(tmp_path, [audit(False, now - timedelta(minutes=1)) for _ in range(30)])
    code, out = status(capsys, cfg, "--json", "--task", "intents")
    assert code == 0
    (intents,) = json.loads(out)
    fallback = intents["fallback"]
    assert fallback["state"] == "fallback" and fallback["audits"] == 30
    assert "version v0001: live agreement 0.000 on 30 audits" in fallback["reason"]
    assert fallback["drift_score"] >= 1.0
    code, text = status(capsys, cfg, "--task", "intents")
    assert "state         fallback: version v0001" in text


def test_status_without_a_store_says_so(tmp_path, cfg, capsys):
    code, out = status(capsys, cfg, "--json")
    assert code == 0
    entry = json.loads(out)[0]
    assert entry["served"]["version"] == "v0001" and "no store at" in entry["store"]
    assert main(["status", "--config", str(cfg), "--task", "absent"]) == 2
