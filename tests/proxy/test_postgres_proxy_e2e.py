"""A proxy on a real PostgreSQL server: it records its traces there; two replicas share one.

They run where `TRACER_TEST_PG_URL` names a server (`.ci/postgres.sh start` starts one
and writes the variable; CI always does) and skip elsewhere; each test gets a database of
its own (`pg_url`, from `postgres_server`).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from proxy import store
from proxy.sim.synthetic import make_intents
from proxy.sim.teacher import SimulatedTeacher, run_sim_teacher
from tests.proxy.postgres_server import run_apart
from tests.support import INTENT_LABELS, intents_config, running_proxy


def test_a_proxy_on_postgresql_stores_its_traces_and_decisions(pg_url: str, tmp_path: Path):
    """`tracer serve`'s app with `store.url` on PostgreSQL, in front of the simulated teacher:
    every task request is answered by the teacher and recorded in the server's tables."""
    rows = make_intents(40, seed=3)
    nul = ("my card\x00 has not arrived", INTENT_LABELS[0])  # NUL: stored as U+FFFD
    sim = SimulatedTeacher(dict([*rows, nul]), labels=INTENT_LABELS)
    refit = {"min_new_traces": 10_000, "interval_seconds": 3600}
    with run_sim_teacher(sim) as teacher_url:
        config = intents_config(teacher_url, tmp_path, store={"url": pg_url}, refit=refit)
        with running_proxy(config) as url, httpx.Client(base_url=url, timeout=30) as client:
            health = client.get(url.removesuffix("/v1") + "/healthz")
            assert health.status_code == 200, health.text

            def ask(row: tuple[str, str]) -> tuple[str, str, str]:
                reply = client.post("/chat/completions", json={
                    "model": "intents", "messages": [{"role": "user", "content": row[0]}],
                })  # fmt: skip
                assert reply.status_code == 200, reply.text
                said = reply.json()["choices"][0]["message"]["content"]
                return said, row[1], reply.headers["x-tracer-decision"]

            with ThreadPoolExecutor(4) as pool:
                answers = list(pool.map(ask, [*rows, nul]))
            streamed = client.post("/chat/completions", json={
                "model": "intents", "stream": True,
                "messages": [{"role": "user", "content": rows[0][0]}],
            })  # fmt: skip
            assert streamed.status_code == 200 and "data: [DONE]" in streamed.text
            classified = client.post("/classify", json={"task": "intents", "input": rows[1][0]})
            assert classified.status_code == 200, classified.text
            assert classified.json()["label"] == rows[1][1]
        # The proxy has stopped: its writer flushed everything queued on the way out.
    assert all(said == label and how == "teacher" for said, label, how in answers), answers

    async def read() -> tuple[list[dict[str, Any]], list[tuple[Any, ...]]]:
        engine = store.create_engine(pg_url)
        try:
            traces = [row async for row in store.iter_traces(engine, "intents")]
            return traces, await store.decisions_after(engine, "intents")
        finally:
            await engine.dispose()

    traces, decisions = run_apart(read)
    assert len(traces) == len(rows) + 3 and len(decisions) == len(rows) + 3
    stored = {(t["input"], t["label"]) for t in traces}
    assert set(rows) <= stored
    assert ("my card\ufffd has not arrived", INTENT_LABELS[0]) in stored
    assert all(t["model"] == "teacher" and t["valid"] and t["latency_ms"] >= 0 for t in traces)
    assert {d[3] for d in decisions} == {"teacher"}


def test_two_proxies_started_together_share_one_database(pg_url: str, tmp_path: Path):
    """Two proxies (two replicas) on one new PostgreSQL database, started at the same moment:
    both create the schema without failing, and each one's traces land in the shared tables."""
    rows = make_intents(20, seed=4)
    sim = SimulatedTeacher(dict(rows), labels=INTENT_LABELS)
    refit = {"min_new_traces": 10_000, "interval_seconds": 3600}
    errors: list[BaseException] = []
    together = threading.Barrier(2)

    def replica(config: Any, share: list[tuple[str, str]]) -> None:
        try:
            together.wait(10)
            with running_proxy(config) as url, httpx.Client(base_url=url, timeout=30) as client:
                for text_, label in share:
                    reply = client.post("/chat/completions", json={
                        "model": "intents", "messages": [{"role": "user", "content": text_}],
                    })  # fmt: skip
                    assert reply.status_code == 200, reply.text
                    assert reply.json()["choices"][0]["message"]["content"] == label
        except BaseException as exc:
            errors.append(exc)

    with run_sim_teacher(sim) as teacher_url:
        threads = [
            threading.Thread(target=replica, args=(
                intents_config(teacher_url, tmp_path / f"r{k}", store={"url": pg_url}, refit=refit),
                rows[k::2],
            ))
            for k in range(2)
        ]  # fmt: skip
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    assert errors == []

    async def count() -> int:
        engine = store.create_engine(pg_url)
        try:
            return await store.count_traces(engine, "intents")
        finally:
            await engine.dispose()

    assert run_apart(count) == len(rows)
