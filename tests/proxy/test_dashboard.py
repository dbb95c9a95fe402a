"""The dashboard without a browser: counts, the map's coordinates, the routes and the guard.

The browser test (`test_dashboard_browser_e2e.py`) checks what a person sees; these
check the pieces it rests on, fast: minutes summed into a range's buckets, the store's
per-minute counts, a held-out input projected live landing on its own held-out point,
the login cookie opening the dashboard and nothing else, and the page's assets never
writing data as HTML.
"""

from __future__ import annotations

import re
import sqlite3
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from starlette.testclient import TestClient

from proxy import store
from proxy.app import create_app
from proxy.dashboard.pointmap import build_projection, pca_axes, read_heldout
from proxy.dashboard.report import live_by_cluster
from proxy.dashboard.series import RANGES, Series
from proxy.http import Guard
from proxy.routes.dashboard import CSP, _login_page
from proxy.sim.synthetic import make_intents
from proxy.store import dashboard as queries
from router import Router
from tests.support import REPO, intents_config, proxy_config, serve_fitted_intents

STATIC = REPO / "proxy" / "dashboard" / "static"
KEY = "dashboard-unit-test-key"
HOSTILE = '<img src=x onerror="alert(1)">'


# -- counts ---------------------------------------------------------------------------------
def test_minutes_are_summed_into_the_range_buckets():
    now = 1_800_000_000.0
    minute = int(now // 60)
    series = Series()
    series.add_decisions(
        [
            (minute, "handled", False, None, None, 6),
            (minute, "deferred", True, None, None, 2),
            (minute - 1, "teacher", None, None, None, 4),
            (minute - 90, "handled", False, None, None, 10),  # in the day, not the hour
            (minute - 3 * 24 * 60, "deferred", False, None, None, 5),  # in the week only
        ]
    )
    series.add_audits([(minute, True, 3), (minute, False, 1)])
    series.add_traces([(minute, 6, 4, 0.02)])

    hour = series.window("hour", now)
    assert len(hour["buckets"]) == 60 and hour["bucket_seconds"] == 60
    assert hour["end"] - hour["start"] == RANGES["hour"][0]
    last = hour["buckets"][-1]
    assert (last["requests"], last["handled"], last["deferred"], last["ood"]) == (8, 6, 2, 2)
    assert last["coverage"] == pytest.approx(0.75) and last["agreement"] == pytest.approx(0.75)
    assert hour["buckets"][-2]["teacher"] == 4 and hour["buckets"][-2]["agreement"] is None
    totals = hour["totals"]
    assert totals["requests"] == 12 and totals["coverage"] == pytest.approx(0.5)
    assert totals["traces"] == 6 and totals["priced"] == 4
    assert totals["cost_usd"] == pytest.approx(0.02)

    day = series.window("day", now)
    assert len(day["buckets"]) == 96 and day["totals"]["requests"] == 22
    week = series.window("week", now)
    assert len(week["buckets"]) == 168 and week["totals"]["requests"] == 27

    series.prune(now + 8 * 24 * 3600)
    assert series.minutes == {}


def test_shadow_columns_count_what_the_model_would_have_done():
    series = Series()
    series.add_decisions(
        [
            (100, "teacher", False, "handled", True, 7),
            (100, "teacher", False, "handled", False, 1),
            (100, "teacher", False, "handled", None, 2),  # not judged (yet)
            (100, "teacher", True, "deferred", None, 3),
        ]
    )
    totals = series.window("hour", 100 * 60 + 30)["totals"]
    assert totals["shadow"] == 13 and totals["shadow_handled"] == 10
    assert totals["shadow_judged"] == 8 and totals["shadow_agreed"] == 7
    assert totals["handled"] == 0 and totals["teacher"] == 13


async def test_the_store_counts_new_rows_by_minute(store_url: str):
    engine = store.create_engine(store_url)
    await store.create_schema(engine)
    writer = store.StoreWriter(engine)
    writer.start()
    at = datetime(2026, 3, 1, 12, 30, 15, tzinfo=UTC)
    minute = int(at.timestamp() // 60)
    for i, decision in enumerate(["handled", "handled", "deferred", "teacher"]):
        writer.submit(
            store.Decision("t", decision, "r", 1.0, ood=i == 2, input=f"text {i}", created_at=at)
        )
    writer.submit(store.Decision("other", "handled", "r", 1.0, created_at=at))
    writer.submit(
        store.Decision("t", "handled", "r", 1.0, created_at=at + timedelta(minutes=2))
    )  # no input: counted, but not a live point
    writer.submit(store.Audit("t", "v1", True, created_at=at))
    writer.submit(store.Audit("t", "v1", True, kind="shadow", created_at=at))
    writer.submit(store.Trace("t", "x", "a", "a", "m", 1.0, cost_usd=0.5, created_at=at))
    await writer.close()
    try:
        top = await queries.newest_id(engine, "decisions", "t")
        counts = await queries.decision_counts(engine, "t", 0, top)
        by_key = {(m, d, o): n for m, d, o, _, _, n in counts}
        assert by_key == {
            (minute, "handled", False): 2,
            (minute, "deferred", True): 1,
            (minute, "teacher", False): 1,
            (minute + 2, "handled", None): 1,
        }
        assert await queries.decision_counts(engine, "t", top, top) == []
        assert await queries.audit_counts(engine, "t", 0, 99) == [(minute, True, 1)]
        assert await queries.trace_counts(engine, "t", 0, 99) == [(minute, 1, 1, 0.5)]
        recent = await queries.recent_requests(engine, "t", 3)
        assert [r["input"] for r in recent] == ["text 3", "text 2", "text 1"]
        assert queries.epoch(recent[0]["created_at"]) == pytest.approx(at.timestamp())
        start = await queries.id_rows_back(engine, "decisions", "t", 2)
        after = await queries.decision_counts(engine, "t", start, top)
        assert sum(n for *_, n in after) == 2  # a first read after `start` sees 2 rows
        assert await queries.id_rows_back(engine, "decisions", "t", 50) == 0
    finally:
        await engine.dispose()


def test_live_requests_are_counted_per_cluster():
    rows = [
        {"cluster": 1, "decision": "handled", "ood": False},
        {"cluster": 1, "decision": "deferred", "ood": True},
        {"cluster": None, "decision": "teacher", "ood": None},
    ]
    assert live_by_cluster(rows) == {1: {"requests": 2, "handled": 1, "ood": 1}}


# -- the map --------------------------------------------------------------------------------
def test_pca_axes_keep_the_widest_spread_and_a_fixed_sign():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4)) * np.array([5.0, 2.0, 0.1, 0.1])
    mean, axes = pca_axes(x)
    assert np.allclose(mean, x.mean(axis=0))
    assert axes.shape == (4, 2)
    assert abs(axes[0, 0]) > 0.99 and abs(axes[1, 1]) > 0.99
    assert axes[np.argmax(np.abs(axes[:, 0])), 0] > 0
    _, flipped = pca_axes(-x)
    assert np.allclose(flipped, axes)
    _, one = pca_axes(x[:, :1])  # one cluster: one axis, the other flat
    assert one.shape == (1, 2) and one[0, 1] == 0


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("artifacts")
    serve_fitted_intents(root, make_intents(500, seed=11)[:400])
    return root


def test_a_held_out_input_seen_live_lands_on_its_held_out_point(artifacts: Path):
    directory = artifacts / "intents" / "versions" / "v0001"
    router = Router.load(directory)
    projection = build_projection(router, "v0001")
    held = projection.heldout
    assert len(held) == len(read_heldout(directory)) >= 20
    assert {p["decision"] for p in held} <= {"handled", "deferred"}
    assert len(projection.centres) >= 2
    texts = [t for t, _ in read_heldout(directory)[:10]]
    live = projection.project(router, texts)
    expected = np.array([[p["x"], p["y"]] for p in held[:10]])
    assert np.allclose(live, expected, atol=1e-4)
    # Each cluster is a ray from the point where an input like no cluster lands.
    odd = projection.project(router, ["§§§ ¤¤¤"])[0]  # no n-gram the embedder knows
    hub = np.array([projection.origin["x"], projection.origin["y"]])
    assert np.allclose(odd, hub, atol=1e-4)
    nearest = min(np.hypot(c["x"] - hub[0], c["y"] - hub[1]) for c in projection.centres)
    assert nearest > 0.01


def test_the_map_is_sent_whole_once_per_version(artifacts: Path, tmp_path: Path):
    config = intents_config("http://127.0.0.1:9/v1", tmp_path, artifacts)
    with TestClient(create_app(config, refit=False)) as client:
        whole = client.get("/dashboard/data").json()["map"]
        assert whole["version"] == "v0001" and whole["note"] is None
        assert len(whole["heldout"]) >= 20 and whole["centres"] and whole["origin"]
        again = client.get("/dashboard/data?have=v0001").json()["map"]
        assert again["heldout"] is None and again["centres"] is None
        assert again["origin"] == whole["origin"]
        other = client.get("/dashboard/data?have=v0000").json()["map"]
        assert other["heldout"] == whole["heldout"]


# -- routes, guard and escaping -----------------------------------------------------------
@pytest.fixture()
def guarded(tmp_path: Path) -> Iterator[tuple[TestClient, Path]]:
    config = proxy_config("http://127.0.0.1:9/v1", tmp_path / "db.sqlite", api_keys=[KEY])
    with TestClient(create_app(config, refit=False), base_url="http://testserver") as client:
        yield client, tmp_path / "db.sqlite"


def test_the_login_cookie_opens_the_dashboard_and_nothing_else(guarded):
    client, _ = guarded
    page = client.get("/dashboard", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/dashboard/login"
    data = client.get("/dashboard/data")
    assert data.status_code == 401 and data.json()["error"]["code"] == "invalid_api_key"
    form = client.get("/dashboard/login")
    assert form.status_code == 200 and 'name="key"' in form.text

    wrong = client.post("/dashboard/login", data={"key": "nope"}, follow_redirects=False)
    assert wrong.status_code == 401 and "not valid" in wrong.text
    assert "set-cookie" not in wrong.headers
    elsewhere = client.post(
        "/dashboard/login", data={"key": KEY}, headers={"Origin": "https://evil.example"},
        follow_redirects=False,
    )  # fmt: skip
    assert elsewhere.status_code == 403 and "set-cookie" not in elsewhere.headers
    cross = client.post(
        "/dashboard/login", data={"key": KEY}, headers={"Sec-Fetch-Site": "cross-site"},
        follow_redirects=False,
    )  # fmt: skip
    assert cross.status_code == 403

    flood = client.post(
        "/dashboard/login", content=b"a=1&" * 20, follow_redirects=False,
        headers={"content-type": "application/x-www-form-urlencoded"},
    )  # fmt: skip
    assert flood.status_code == 400 and "set-cookie" not in flood.headers

    ok = client.post("/dashboard/login", data={"key": KEY}, follow_redirects=False)
    assert ok.status_code == 303 and ok.headers["location"] == "/dashboard"
    cookie = ok.headers["set-cookie"]
    assert cookie.startswith(f"{Guard.COOKIE}={Guard.session_token(KEY)};")
    assert KEY not in cookie
    for attribute in ("HttpOnly", "Path=/dashboard", "SameSite=strict"):
        assert attribute.lower() in cookie.lower()
    assert client.get("/dashboard").status_code == 200
    assert client.get("/dashboard/data").json()["task"] == "banking"
    # The cookie is worth nothing outside the dashboard, nor is a forged one inside it.
    assert client.get("/v1/models").status_code == 401
    client.cookies.clear()
    client.cookies.set(Guard.COOKIE, Guard.session_token("another-key"), path="/dashboard")
    assert client.get("/dashboard", follow_redirects=False).status_code == 303
    assert client.get("/dashboard/data").status_code == 401
    bearer = client.get("/dashboard/data", headers={"Authorization": f"Bearer {KEY}"})
    assert bearer.status_code == 200


def test_page_assets_and_data_are_served_under_a_strict_policy(guarded):
    client, _ = guarded
    auth = {"Authorization": f"Bearer {KEY}"}
    for path, kind in [
        ("/dashboard", "text/html"),
        ("/dashboard/static/dashboard.js", "text/javascript"),
        ("/dashboard/static/dashboard.css", "text/css"),
        ("/dashboard/data", "application/json"),
        ("/dashboard/login", "text/html"),
    ]:
        reply = client.get(path, headers=auth)
        assert reply.status_code == 200, path
        assert reply.headers["content-type"].startswith(kind), path
        assert reply.headers["x-content-type-options"] == "nosniff"
        assert reply.headers["content-security-policy"] == CSP
    assert "script-src 'self';" in CSP and "unsafe" not in CSP
    assert client.get("/dashboard/static/app.py", headers=auth).status_code == 404
    assert client.get("/dashboard/static/..%2Fdata.py", headers=auth).status_code == 404
    assert client.get("/dashboard/data?range=year", headers=auth).status_code == 400
    missing = client.get("/dashboard/data?task=nope", headers=auth)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "task_not_found"


def _insert(db: Path, rows: list[dict[str, Any]]) -> None:
    at = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    with sqlite3.connect(db) as conn:
        for row in rows:
            row = {"task": "banking", "reason": "r", "latency_ms": 1.0, "created_at": at, **row}
            names = ", ".join(row)
            marks = ", ".join("?" * len(row))
            conn.execute(f"INSERT INTO decisions ({names}) VALUES ({marks})", list(row.values()))


def test_data_carries_trace_text_as_data_and_shadow_only_when_present(guarded, monkeypatch):
    client, db = guarded
    monkeypatch.setattr("proxy.dashboard.data.CACHE_S", 0.0)  # every call reads the store
    auth = {"Authorization": f"Bearer {KEY}"}
    _insert(db, [{"decision": "teacher", "input": HOSTILE, "label": "<b>x</b>"}])
    body = client.get("/dashboard/data", headers=auth).json()
    assert body["recent"][0]["input"] == HOSTILE and body["recent"][0]["label"] == "<b>x</b>"
    assert body["shadow"] is None and body["totals"]["requests"] == 1
    assert body["map"]["live"] == [] and body["map"]["note"].startswith("no model")
    assert body["served"]["version"] is None and body["checks"]["version"] is None
    assert body["savings"]["since_start"]["teacher_calls_avoided"] == 0

    shadowed = [
        {"decision": "teacher", "shadow": "handled", "shadow_agrees": i < 3} for i in range(4)
    ]
    _insert(db, [*shadowed, {"decision": "teacher", "shadow": "deferred"}])
    body = client.get("/dashboard/data?range=day", headers=auth).json()
    shadow = body["shadow"]
    assert shadow["requests"] == 5 and shadow["would_handle"] == 4
    assert shadow["coverage"] == pytest.approx(0.8) and shadow["agreement"] == pytest.approx(0.75)
    assert body["range"] == "day" and len(body["series"]["buckets"]) == 96


def test_no_key_means_no_login(tmp_path: Path):
    config = intents_config("http://127.0.0.1:9/v1", tmp_path)
    with TestClient(create_app(config, refit=False)) as client:
        assert client.get("/dashboard").status_code == 200
        reply = client.get("/dashboard/login", follow_redirects=False)
        assert reply.status_code == 303 and reply.headers["location"] == "/dashboard"
        assert client.get("/dashboard/data").json()["tasks"] == ["intents"]


def test_the_page_never_writes_data_as_html():
    script = (STATIC / "dashboard.js").read_text(encoding="utf-8")
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                 "new Function", "setAttribute(\"on", ".style."):  # fmt: skip
        assert sink not in script, sink
    own_script = '<script src="/dashboard/static/dashboard.js" defer>'
    for page in ("dashboard.html", "login.html"):
        text = (STATIC / page).read_text(encoding="utf-8")
        assert re.findall(r"<script[^>]*>", text) in ([], [own_script])
        assert "<style" not in text and not re.search(r"<[^>]+\s(style|on\w+)\s*=", text)
    assert "&lt;b&gt;" in _login_page("<b>").body.decode()


def test_the_assets_ship_in_the_wheel():
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["setuptools"]["package-data"]["proxy.dashboard"]
    shipped = {p.name for pattern in patterns for p in (STATIC.parent).glob(pattern)}
    assert shipped == {p.name for p in STATIC.iterdir() if p.is_file()}
