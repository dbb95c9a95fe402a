"""The store on a real PostgreSQL server (asyncpg): writer, schema, queries, leases.

They run where `TRACER_TEST_PG_URL` names a server (`.ci/postgres.sh start` starts one
and writes the variable; CI always does) and skip elsewhere. Each test gets a database of
its own, created for it and dropped after it, so no test sees another's rows. A proxy on
PostgreSQL is tested in `test_postgres_proxy_e2e`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy import store
from proxy.store.schema import LeaseRow


@pytest.fixture
async def engine(pg_url: str) -> Any:
    engine = store.create_engine(pg_url)
    await store.create_schema(engine)
    yield engine
    await engine.dispose()


def trace(i: int, label: str | None = "a", **changes: Any) -> store.Trace:
    record = store.Trace(
        task="t", input=f"text {i}", label=label, raw_output=label, model="m", latency_ms=1.0
    )
    return replace(record, **changes)


async def columns(engine: AsyncEngine, table: str) -> set[str]:
    query = text("SELECT column_name FROM information_schema.columns WHERE table_name = :t")
    async with engine.connect() as conn:
        return {row[0] for row in (await conn.execute(query, {"t": table})).all()}


# -- the writer -----------------------------------------------------------------------------


async def test_the_writer_stores_batches_of_traces_decisions_and_audits(engine: AsyncEngine):
    stored: list[store.Record] = []
    writer = store.StoreWriter(engine, on_stored=stored.extend, batch_size=500, linger_s=0.01)
    writer.start()
    sources = ["teacher", "deferred", "audit", "explore"]
    for i in range(1200):  # several batches
        label = None if i % 10 == 0 else ("a" if i % 3 else "b")
        writer.submit(trace(i, label=label, source=sources[i % 4], prompt_tokens=i, cost_usd=0.5))
        writer.submit(trace(i, task="other"))
    for i in range(40):
        writer.submit(store.Decision(
            task="t", decision="handled" if i % 4 else "deferred", reason="r", latency_ms=0.5,
            label="a", accept_score=0.9, model_version="v1" if i < 30 else "v2",
            ood=i % 5 == 0, cluster=i % 3, input=f"text {i}", shadow_agrees=True,
        ))  # fmt: skip
        writer.submit(store.Audit(task="t", version="v1", agrees=i % 7 != 0, cluster=i % 3))
    writer.submit(store.Audit("t", "v1", True, "small", 1, "text lane", "confirm", "a"))
    writer.submit(store.ToolList("t", '[{"type": "function", "function": {"name": "f"}}]'))
    writer.submit(store.ToolList("t", '[{"type": "function", "function": {"name": "g"}}]'))
    await writer.close()
    assert len(stored) == 2483
    tools = await store.latest_tools(engine, "t")
    assert tools == '[{"type": "function", "function": {"name": "g"}}]'
    assert await store.latest_tools(engine, "other") is None

    rows = [row async for row in store.iter_traces(engine, "t")]
    assert len(rows) == 1080
    assert [r["input"] for r in rows[:3]] == ["text 1", "text 2", "text 3"]
    assert all(r["valid"] is True and r["task"] == "t" for r in rows)
    assert rows[0]["created_at"].tzinfo is not None and rows[0]["prompt_tokens"] == 1
    everything = [row async for row in store.iter_traces(engine, "t", valid_only=False)]
    assert len(everything) == 1200 and everything[0]["label"] is None
    after = [row async for row in store.iter_traces(engine, "t", after_id=rows[-2]["id"])]
    assert [r["id"] for r in after] == [rows[-1]["id"]]

    assert await store.count_traces(engine, "t") == 1080
    assert await store.count_traces(engine, "t", after_id=rows[-1]["id"]) == 0
    last_trace = await store.last_id(engine, "traces", "t")
    assert last_trace == everything[-1]["id"]
    # Sampled: valid, and not "deferred" (every 4th from i=1 is deferred).
    sampled = sum(1 for i in range(1200) if i % 10 != 0 and sources[i % 4] != "deferred")
    assert await store.count_sampled(engine, "t") == (sampled, last_trace)
    assert await store.count_sampled(engine, "t", after_id=last_trace) == (0, last_trace)
    firsts = await store.fresh_traces_after(engine, "t", 0, limit=3)
    assert [(r[1], r[2], r[3]) for r in firsts] == [
        ("text 2", "a", "a"), ("text 3", "b", "b"), ("text 4", "a", "a")
    ]  # fmt: skip
    assert len(await store.fresh_traces_after(engine, "t", 0)) == sampled

    audits = await store.audits_after(engine, "t")
    assert len(audits) == 41
    assert audits[0][1:6] == ("v1", "surrogate", 0, False, "audit")  # (id, version, lane, ...)
    assert audits[-1][1:] == ("v1", "small", 1, True, "confirm", "text lane", "a")
    assert await store.audits_after(engine, "t", after_id=audits[-1][0]) == []
    assert len(await store.audits_after(engine, "t", after_id=audits[9][0], limit=5)) == 5
    assert await store.last_id(engine, "audits", "t") == audits[-1][0]

    decisions = await store.decisions_after(engine, "t")
    assert len(decisions) == 40
    assert decisions[0][1:4] == ("v1", True, "deferred")  # (id, version, ood, decision)
    assert decisions[1][1:4] == ("v1", False, "handled")
    assert await store.last_id(engine, "decisions", "t") == decisions[-1][0]
    assert await store.last_id(engine, "decisions", "nobody") == 0
    assert await store.served_coverage(engine, "t", "v1") == (22, 30)
    assert await store.served_coverage(engine, "t", "v2", last=4) == (3, 4)
    assert await store.served_coverage(engine, "t", "v9") == (0, 0)


async def test_nul_and_lone_surrogates_become_storable_and_a_bad_row_is_dropped_alone(
    engine: AsyncEngine,
):
    """PostgreSQL's text columns refuse NUL (and UTF-8 refuses lone surrogates): `storable`
    turns both into U+FFFD. A row the server still refuses is found by halving the batch
    and dropped alone; every other row of its batch is written."""
    raw = text(
        "INSERT INTO audits (task, lane, agrees, kind, input) VALUES ('t', 'l', true, 'a', :i)"
    )
    with pytest.raises(DBAPIError, match="0x00"):  # what the writer protects against
        async with engine.begin() as conn:
            await conn.execute(raw, {"i": "a\x00b"})
    dropped: list[store.Record] = []
    writer = store.StoreWriter(engine, on_dropped=dropped.append, linger_s=0.05)
    writer.start()
    for i in range(300):
        said = "a\udc00" if i == 9 else "a\x00" if i == 10 else "a"
        text_ = f"text {i}" + ("\ud800" if i == 7 else "") + ("\x00" if i == 8 else "")
        writer.submit(trace(i, input=text_, raw_output=said))
    writer.submit(store.Decision(task="t", decision="handled", reason="\ud800 \x00",
                                 latency_ms=1.0, input="in\x00put", label="a\x00"))  # fmt: skip
    writer.submit(store.Audit(task="t", version="v\x00", agrees=True, input="x\ud83dy\x00"))
    # A row PostgreSQL refuses (and SQLite would take): a token count beyond its integer.
    writer.submit(trace(300, prompt_tokens=2**40))
    for i in range(301, 320):
        writer.submit(trace(i))
    await writer.close()

    assert len(dropped) == 1 and isinstance(dropped[0], store.Trace)
    assert dropped[0].input == "text 300"
    rows = [row async for row in store.iter_traces(engine, "t")]
    assert len(rows) == 319
    assert rows[7]["input"] == "text 7\ufffd" and rows[8]["input"] == "text 8\ufffd"
    assert rows[9]["raw_output"] == "a\ufffd" and rows[10]["raw_output"] == "a\ufffd"
    assert rows[-1]["input"] == "text 319"
    async with engine.connect() as conn:
        decision = (await conn.execute(text("SELECT reason, input, label FROM decisions"))).one()
        audit = (await conn.execute(text("SELECT version, input FROM audits"))).one()
    assert tuple(decision) == ("\ufffd \ufffd", "in\ufffdput", "a\ufffd")
    assert tuple(audit) == ("v\ufffd", "x\ufffdy\ufffd")


async def test_an_unreachable_server_is_retried_not_dropped(pg_url: str):
    """A refused connection is transient: the writer retries and, given up, counts the loss."""
    url = make_url(pg_url).set(port=1)  # nothing listens on port 1
    engine = store.create_engine(url.render_as_string(hide_password=False))
    dropped: list[store.Record] = []
    writer = store.StoreWriter(engine, on_dropped=dropped.append, linger_s=0, retry_s=0.4)
    writer.start()
    writer.submit(trace(0))
    started = time.monotonic()
    await writer.close()
    assert time.monotonic() - started >= 0.2  # retried, with backoff, before giving up
    assert len(dropped) == 1
    await engine.dispose()


# -- the schema -----------------------------------------------------------------------------


async def test_create_schema_is_idempotent_and_adds_missing_nullable_columns(pg_url: str):
    engine = store.create_engine(pg_url)
    try:
        await store.create_schema(engine)
        await store.create_schema(engine)  # twice: nothing to do, nothing fails
        assert {"shadow_agrees", "cost_usd", "lane"} <= await columns(engine, "decisions")
        # A database from an older version: columns that came later are missing.
        async with engine.begin() as conn:
            await conn.execute(text("ALTER TABLE decisions DROP COLUMN shadow_agrees, "
                                    "DROP COLUMN cost_usd, DROP COLUMN lane"))  # fmt: skip
            await conn.execute(text("ALTER TABLE refits DROP COLUMN attempt, DROP COLUMN delta"))
        assert "cost_usd" not in await columns(engine, "decisions")
        await store.create_schema(engine)
        assert {"shadow_agrees", "cost_usd", "lane"} <= await columns(engine, "decisions")
        assert {"attempt", "delta"} <= await columns(engine, "refits")
        async with engine.connect() as conn:
            kinds = dict((await conn.execute(text(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_name = 'decisions' AND column_name IN ('shadow_agrees', 'cost_usd')"
            ))).all())  # fmt: skip
        assert kinds == {"shadow_agrees": "boolean", "cost_usd": "double precision"}
        # ...and the re-added columns take writes and reads.
        writer = store.StoreWriter(engine, linger_s=0)
        writer.start()
        writer.submit(store.Decision(task="t", decision="handled", reason="r", latency_ms=1.0,
                                     lane="fast", shadow_agrees=False, cost_usd=0.25))  # fmt: skip
        await writer.close()
        async with engine.connect() as conn:
            row = await conn.execute(text("SELECT lane, shadow_agrees, cost_usd FROM decisions"))
            assert tuple(row.one()) == ("fast", False, 0.25)
    finally:
        await engine.dispose()


async def test_replicas_starting_together_create_the_schema_once(pg_url: str):
    """Four replicas' `create_schema` at once on a new database: none fails."""
    engines = [store.create_engine(pg_url) for _ in range(4)]
    try:
        await asyncio.gather(*(store.create_schema(e) for e in engines))
        assert {"id", "task", "input", "source"} <= await columns(engines[0], "traces")
    finally:
        await asyncio.gather(*(e.dispose() for e in engines))


# -- refits ---------------------------------------------------------------------------------


async def test_refit_rows_attempts_candidates_and_history(engine: AsyncEngine):
    def refit(outcome: str, delta: float | None, version: str | None = None) -> dict[str, Any]:
        return {"task": "t", "outcome": outcome, "version": version, "n_traces": 100,
                "last_trace_id": 100, "reason": None, "seconds": 1.5, "attempt": 1,
                "delta": delta}  # fmt: skip

    assert await store.refit_attempts(engine, "t") == 0
    assert await store.last_refit(engine, "t") is None
    await store.record_refit(engine, **refit("deployed", 0.02, "v0001"))
    await store.record_refit(engine, **refit("refused", 0.0))  # refused before the test split
    await store.record_refit(engine, **refit("failed", None))  # older rows: no delta recorded
    await store.record_refit(engine, **refit("candidate", 0.01, "v0002"))
    await store.record_refit(engine, **refit("candidate", 0.005, "v0003"))
    await store.record_refit(engine, **refit("deployed", 0.01, "v0009") | {"task": "u"})
    assert await store.refit_attempts(engine, "t") == 4
    assert await store.refit_attempts(engine, "u") == 1

    pending = await store.pending_candidates(engine, "t")
    assert [p["version"] for p in pending] == ["v0002", "v0003"]
    assert pending[0]["created_at"].tzinfo is not None
    await store.settle_refit(engine, pending[0]["id"], "superseded", "a newer candidate")
    await store.settle_refit(engine, pending[1]["id"], "deployed", None)
    assert await store.pending_candidates(engine, "t") == []

    history = await store.refit_history(engine, "t")
    assert [h["outcome"] for h in history] == [
        "deployed", "superseded", "failed", "refused", "deployed"
    ]  # fmt: skip
    assert history[1]["reason"] == "a newer candidate"
    assert [h["version"] for h in await store.refit_history(engine, "t", limit=2)] == [
        "v0003", "v0002"
    ]  # fmt: skip
    last = await store.last_refit(engine, "t")
    assert last is not None and last["version"] == "v0003"


# -- leases ---------------------------------------------------------------------------------


async def lease_of(engine: AsyncEngine, task: str) -> tuple[str, float]:
    async with engine.connect() as conn:
        row = (await conn.execute(select(LeaseRow.holder, LeaseRow.expires_at)
                                  .where(LeaseRow.task == task))).one()  # fmt: skip
    return row[0], row[1]


async def test_two_engines_racing_for_a_lease_one_wins(pg_url: str):
    """Two replicas (two engines, two connection pools) race for each of 30 tasks' leases:
    new ones (the INSERT path) and expired ones (the conditional UPDATE): one wins each."""
    one, two = store.create_engine(pg_url), store.create_engine(pg_url)
    try:
        await store.create_schema(one)
        for round_ in ("new", "expired"):
            for k in range(30):
                task = f"task-{k}"
                if round_ == "expired":
                    await store.release_lease(one, task, (await lease_of(one, task))[0])
                won = await asyncio.gather(
                    store.acquire_lease(one, task, "replica-1", 60),
                    store.acquire_lease(two, task, "replica-2", 60),
                )
                assert sorted(won) == [False, True], (round_, task, won)
                holder, _ = await lease_of(two, task)
                assert holder == ("replica-1" if won[0] else "replica-2")
    finally:
        await asyncio.gather(one.dispose(), two.dispose())


async def test_a_lease_is_renewed_by_its_holder_and_expires(engine: AsyncEngine):
    assert await store.acquire_lease(engine, "t", "a", 60)
    _, first = await lease_of(engine, "t")
    assert not await store.acquire_lease(engine, "t", "b", 60)  # held
    await asyncio.sleep(0.02)
    assert await store.acquire_lease(engine, "t", "a", 60)  # renewed: later expiry
    holder, renewed = await lease_of(engine, "t")
    assert holder == "a" and renewed > first
    assert await store.acquire_lease(engine, "t", "a", 2.0)  # renewal sets the new ttl
    assert not await store.acquire_lease(engine, "t", "b", 60)  # (a stall under 2 s is fine)
    await asyncio.sleep(2.2)
    assert await store.acquire_lease(engine, "t", "b", 60)  # expired: another takes it
    assert not await store.acquire_lease(engine, "t", "a", 60)
    await store.release_lease(engine, "t", "a")  # not the holder: changes nothing
    assert not await store.acquire_lease(engine, "t", "a", 60)
    await store.release_lease(engine, "t", "b")
    assert await store.acquire_lease(engine, "t", "a", 60)
    assert await lease_of(engine, "t") == ("a", pytest.approx(time.time() + 60, abs=5))
