"""Two replicas that share nothing but the store URL: versions reach each other through it.

Two real proxies (uvicorn, child-process fits) on artifacts folders of their own and one
store (SQLite; PostgreSQL too where `TRACER_TEST_PG_URL` names a server): a version one
of them fits is served by the other within seconds, one published on the other comes
back, and a rollback on either is followed by both.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette

from proxy.app import create_app
from proxy.server import uvicorn_options
from proxy.sim.synthetic import make_intents
from proxy.sim.teacher import SimulatedTeacher, run_sim_teacher
from proxy.sim.threaded import serve_in_thread
from proxy.state import ProxyState
from tests.support import INTENT_LABELS, intents_config

TASK = "intents"
FIT = {"target": 0.9, "confidence": 0.9, "min_coverage": 0.05}
N_FIT = 600


@contextlib.contextmanager
def serving(app: Starlette) -> Iterator[httpx.Client]:
    options = uvicorn_options(keep_alive_s=75, read_timeout_s=30)
    with serve_in_thread(app, **options) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client


def ask(client: httpx.Client, text: str) -> tuple[str, str | None]:
    reply = client.post(
        "/v1/chat/completions",
        json={"model": TASK, "messages": [{"role": "user", "content": text}]},
    )
    assert reply.status_code == 200, reply.text
    return reply.headers["x-tracer-decision"], reply.headers.get("x-tracer-model-version")


def served(app: Starlette) -> str | None:
    state: ProxyState = app.state.tracer
    live = state.models.get(TASK)
    return live.version if live is not None else None


def wait(condition: Callable[[], Any], timeout_s: float, what: str) -> float:
    """Seconds until `condition` held."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, f"timed out waiting for {what}"
        time.sleep(0.1)
    return time.monotonic() - started


def test_replicas_on_folders_of_their_own_share_versions_through_the_store(
    store_url: str, tmp_path: Path
):
    rows = make_intents(N_FIT + 200, seed=5)
    sim = SimulatedTeacher(dict(rows), labels=INTENT_LABELS)
    refit = {"min_new_traces": N_FIT, "interval_seconds": 3600}
    with run_sim_teacher(sim) as teacher_url:

        def config(name: str) -> Any:
            return intents_config(
                teacher_url, tmp_path / name, store={"url": store_url}, task=FIT, refit=refit
            )

        one, two = create_app(config("one")), create_app(config("two"), refit=False)
        with serving(one) as to_one, serving(two) as to_two:
            # Traffic reaches `two` only; `one` fits on it, through the store.
            with ThreadPoolExecutor(4) as pool:
                answers = list(pool.map(lambda r: ask(to_two, r[0]), rows[:N_FIT]))
            assert {decision for decision, _ in answers} == {"teacher"}
            wait(lambda: served(one) is not None, 300, "the first fit on replica one")
            first = served(one)
            took = wait(lambda: served(two) == first, 30, "replica two to follow")
            assert took < 10, took  # the poll runs every 2 s

            folder_one = tmp_path / "one" / "artifacts" / TASK
            folder_two = tmp_path / "two" / "artifacts" / TASK
            for path in (folder_one / "versions" / str(first)).iterdir():
                if path.is_file():
                    fetched = folder_two / "versions" / str(first) / path.name
                    assert fetched.read_bytes() == path.read_bytes(), path.name
            assert not (folder_two / "work").exists()  # two never fitted anything
            later = [ask(to_two, text) for text, _ in rows[N_FIT : N_FIT + 60]]
            assert {version for _, version in later} == {first}
            assert "handled" in {decision for decision, _ in later}

            # A version published on two (a copy, where a fit there would write it)...
            on_two: ProxyState = two.state.tracer
            second = on_two.models.store.next_version(TASK)
            shutil.copytree(folder_two / "versions" / str(first), folder_two / "versions" / second)
            on_two.models.store.set_current(TASK, second)
            wait(lambda: served(one) == second, 30, "replica one to follow")
            assert ask(to_one, rows[0][0])[1] == second

            # ...and a rollback on one: both serve the first version again.
            on_one: ProxyState = one.state.tracer
            assert on_one.models.store.rollback(TASK) == first
            wait(lambda: served(two) == first and served(one) == first, 30, "the rollback")
            assert ask(to_two, rows[1][0])[1] == first
