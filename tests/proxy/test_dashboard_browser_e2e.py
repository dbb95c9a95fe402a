"""The dashboard in a real browser: Debian's chromium, driven by Playwright, against a
real proxy on loopback with a served model, a simulated teacher and live traffic.

It logs in through the page's form, waits for the charts and the partition map, and
checks what a person would: live requests are pinned on the map, out-of-distribution
ones are ringed, hostile trace text shows as text and runs nothing, the console stays
clean, and no request leaves 127.0.0.1. It saves a screenshot to a temporary folder,
or, to refresh the README's, where `TRACER_DASHBOARD_SCREENSHOT` says:

    TRACER_DASHBOARD_SCREENSHOT=docs/images/dashboard.png \
        .venv/bin/pytest tests/proxy/test_dashboard_browser_e2e.py

CI installs chromium and Playwright first (.ci/browser.sh), and the test fails there if
either is missing; elsewhere it skips, saying which.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from proxy.sim.synthetic import INTENTS, make_intents
from proxy.sim.teacher import SimulatedTeacher, run_sim_teacher
from tests.support import intents_config, running_proxy, serve_fitted_intents

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
KEY = "client-key-for-the-dashboard"
LABELS = sorted(INTENTS)
# Nothing like the banking intents: deferred, most of them out of distribution.
ODD = [
    "zxqv blorf quux wibble",
    "recommend a good thriller novel set in iceland",
    "how many legs does a spider have",
    "qwpoe rtyzz mnbvc lkjhg",
]
HOSTILE = [
    '<img src=x onerror="window.__pwned=1;alert(1)">',
    "<script>window.__pwned=2;alert(2)</script>",
]

try:
    from playwright import sync_api
except ImportError:  # skipped (or, in CI, failed) with the reason below
    sync_api = None


def _browser_missing() -> str | None:
    if sync_api is None:
        return "Playwright for Python is not installed (.ci/browser.sh installs it)"
    if not CHROMIUM.exists():
        return f"Debian's chromium is not at {CHROMIUM} (.ci/browser.sh installs it)"
    return None


@pytest.fixture(scope="module")
def traffic(tmp_path_factory: pytest.TempPathFactory):
    """A proxy behind a client key, serving a fitted model, after ~80 live requests."""
    missing = _browser_missing()
    if missing is not None:
        if os.environ.get("CI"):  # CI installs both first: a skip there would hide a gap
            pytest.fail(f"{missing}; CI must run .ci/browser.sh before pytest")
        pytest.skip(missing)
    rows = make_intents(1700, seed=11)
    root = tmp_path_factory.mktemp("artifacts")
    serve_fitted_intents(root, rows[:1500])
    sim = SimulatedTeacher(dict(rows), labels=LABELS)
    tmp = tmp_path_factory.mktemp("proxy")
    db = tmp / "tracer.db"
    with run_sim_teacher(sim) as teacher_url:
        task = {"prompt": "Classify the banking question.", "audit_rate": 0.5}
        config = intents_config(teacher_url, tmp, root, task=task, server={"api_keys": [KEY]})
        with running_proxy(config) as url:
            base = url.removesuffix("/v1")
            auth = {"Authorization": f"Bearer {KEY}"}
            inputs = [t for t, _ in rows[1500:1570]] + ODD + HOSTILE
            with httpx.Client(base_url=base, headers=auth, timeout=30) as client:
                for text in inputs:
                    reply = client.post("/v1/classify", json={"task": "intents", "input": text})
                    assert reply.status_code == 200, reply.text
            _wait_for_rows(db, len(inputs))
            _write_history(db)
            _wait_for_checks(base, auth)
            yield base, db


def _wait_for_rows(db: Path, n: int, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with sqlite3.connect(db) as conn:
            decisions = conn.execute("SELECT count(*) FROM decisions").fetchone()[0]
            audits = conn.execute("SELECT count(*) FROM audits").fetchone()[0]
        if decisions >= n and audits > 0:
            return
        time.sleep(0.1)
    raise AssertionError(f"only {decisions} decisions and {audits} audits were written")


def _write_history(db: Path, minutes: int = 55) -> None:
    """An hour of earlier traffic, as the writer stores it: first the teacher alone, then
    the model answering more and more of it, with a share audited. No inputs, so none of
    it lands on the map: only the charts read it."""
    rng = random.Random(3)
    now = datetime.now(UTC).replace(tzinfo=None)
    decisions, audits = [], []
    for ago in range(minutes, 1, -1):
        at = (now - timedelta(minutes=ago, seconds=rng.random() * 50)).strftime(
            "%Y-%m-%d %H:%M:%S.%f"
        )
        served = ago < minutes - 12
        share = min(0.93, 0.55 + 0.01 * (minutes - 12 - ago)) if served else 0.0
        for _ in range(rng.randint(6, 14)):
            handled = rng.random() < share
            decision = "teacher" if not served else "handled" if handled else "deferred"
            decisions.append(("intents", decision, "earlier traffic", 1.0, at,
                              "v0001" if served else None))  # fmt: skip
            if decision == "handled" and rng.random() < 0.3:
                audits.append(("intents", "v0001", "surrogate", rng.random() < 0.96, "audit", at))
    with sqlite3.connect(db) as conn:
        conn.executemany(
            "INSERT INTO decisions (task, decision, reason, latency_ms, created_at, model_version)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            decisions,
        )
        conn.executemany(
            "INSERT INTO audits (task, version, lane, agrees, kind, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            audits,
        )


def _wait_for_checks(base: str, auth: dict[str, str], timeout_s: float = 10.0) -> None:
    """Until the live checks (polled every 2 s) have read the audits of the traffic."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body = httpx.get(f"{base}/dashboard/data", headers=auth).json()
        if body["checks"].get("audits"):
            return
        time.sleep(0.5)
    raise AssertionError("the live checks never read an audit")


def test_the_dashboard_draws_live_traffic_safely_in_a_browser(traffic):
    base, db = traffic
    with sqlite3.connect(db) as conn:
        ood_inputs = {r[0] for r in conn.execute("SELECT input FROM decisions WHERE ood = 1")}
    console: list[str] = []
    requests: list[str] = []
    dialogs: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, timeout=20_000)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(15_000)
            page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
            page.on("request", lambda r: requests.append(r.url))
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))

            # Without the cookie the page sends the browser to the login form.
            page.goto(f"{base}/dashboard")
            assert page.url == f"{base}/dashboard/login"
            page.fill("#key", "not-the-key")
            with page.expect_navigation():
                page.click("#login")
            sync_api.expect(page.locator("#login-error")).to_contain_text("not valid")
            # ...answered 401, which the browser logs; nothing else may be logged.
            assert all("401" in line for line in console), console
            console.clear()
            page.fill("#key", KEY)
            page.click("#login")
            page.wait_for_url(f"{base}/dashboard")
            page.wait_for_selector("body[data-ready='1']")
            page.wait_for_selector("svg[data-map] circle.live")

            # The charts are drawn from the decisions and audits.
            bars = page.get_attribute("svg[data-chart='requests']", "data-bars")
            assert bars is not None and int(bars) > 50  # the last hour's minutes
            for chart in ("coverage", "agreement"):
                points = page.get_attribute(f"svg[data-chart='{chart}']", "data-points")
                assert points is not None and int(points) > 0, chart
            # The map: held-out points, live requests pinned, out-of-distribution ones ringed.
            assert page.locator("svg[data-map] circle.heldout").count() > 100
            live = page.locator("svg[data-map] circle.live")
            assert live.count() >= 70
            drawn = {live.nth(i).get_attribute("data-decision") for i in range(live.count())}
            assert {"handled", "deferred"} <= drawn
            assert ood_inputs, "the odd inputs should be out of distribution"
            assert page.locator("svg[data-map] circle.ood-ring").count() == len(ood_inputs)
            assert page.locator("svg[data-map] g.centre").count() >= 2
            assert page.locator("svg[data-map] path.hub").count() == 1
            assert page.locator("#clusters article.card").count() >= 2
            assert page.locator("#refits tbody tr").count() >= 1
            assert "v0001" in page.inner_text("#kpis")

            # Hostile trace text is shown as text, and nothing in it ran.
            recent = page.inner_text("#recent")
            for text in HOSTILE:
                assert text in recent
            assert page.locator("#recent img, #recent script, main img").count() == 0
            assert page.locator("script").count() == 1
            assert page.evaluate("window.__pwned") is None
            titles = page.locator("svg[data-map] circle.live title").all_text_contents()
            assert any(HOSTILE[0] in t for t in titles)

            # The range switch redraws from the server; the held-out points, sent once per
            # version, stay drawn.
            with page.expect_response(lambda r: "range=day" in r.url) as switched:
                page.click("#ranges button[data-range='day']")
            assert "have=v0001" in switched.value.url
            page.wait_for_function(
                "document.querySelector(\"#ranges button[data-range='day']\")"
                ".getAttribute('aria-pressed') === 'true'"
            )
            assert page.locator("svg[data-chart='requests'] rect").count() > 0
            assert page.locator("svg[data-map] circle.heldout").count() > 100
            page.click("#ranges button[data-range='hour']")
            page.wait_for_selector("#ranges button[data-range='hour'][aria-pressed='true']")
            page.wait_for_timeout(300)
            wanted = os.environ.get("TRACER_DASHBOARD_SCREENSHOT")
            shot = Path(wanted) if wanted else db.parent / "dashboard.png"
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert not dialogs, dialogs
    assert not console, console
    outside = [u for u in requests if not (u.startswith(base + "/") or u.startswith("data:"))]
    assert not outside, outside
