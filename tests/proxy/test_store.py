"""The store writer: batches, flushes on close, and counts what it cannot keep."""

from __future__ import annotations

from dataclasses import replace

from proxy import store


def trace(i: int, label: str | None = "a") -> store.Trace:
    return store.Trace(
        task="t", input=f"text {i}", label=label, raw_output=label, model="m", latency_ms=1.0
    )


async def test_close_flushes_everything_queued(tmp_path):
    engine = store.create_engine(f"sqlite+aiosqlite:///{tmp_path / 's.db'}")
    await store.create_schema(engine)
    stored: list[store.Record] = []
    writer = store.StoreWriter(engine, queue_size=1000, on_stored=stored.extend)
    writer.start()
    for i in range(300):
        assert writer.submit(trace(i, label=None if i % 10 == 0 else "a"))
    writer.submit(store.Decision(task="t", decision="teacher", reason="r", latency_ms=2.0))
    await writer.close()
    assert len(stored) == 301
    rows = [row async for row in store.iter_traces(engine, "t")]
    assert len(rows) == 270 and [r["input"] for r in rows[:2]] == ["text 1", "text 2"]
    assert await store.count_traces(engine, "t") == 270
    assert await store.count_traces(engine, "t", after_id=rows[-1]["id"]) == 0
    everything = [row async for row in store.iter_traces(engine, "t", valid_only=False)]
    assert len(everything) == 300
    await engine.dispose()


async def test_a_full_queue_drops_and_counts(tmp_path):
    engine = store.create_engine(f"sqlite+aiosqlite:///{tmp_path / 's.db'}")
    dropped: list[store.Record] = []
    writer = store.StoreWriter(engine, queue_size=3, on_dropped=dropped.append)
    results = [writer.submit(trace(i)) for i in range(5)]  # not started: nothing drains
    assert results == [True, True, True, False, False]
    assert len(dropped) == 2 and writer.pending == 3
    await engine.dispose()


async def test_sampled_traces_are_counted_on_from_the_last_id(tmp_path):
    engine = store.create_engine(f"sqlite+aiosqlite:///{tmp_path / 's.db'}")
    await store.create_schema(engine)
    writer = store.StoreWriter(engine, linger_s=0)
    writer.start()
    sources = ["teacher", "deferred", "audit", "explore", "deferred"]
    for i, source in enumerate(sources):
        writer.submit(replace(trace(i), source=source))
    writer.submit(replace(trace(5, label=None), source="audit"))  # invalid: never calibrates
    await writer.flush()
    count, through = await store.count_sampled(engine, "t")
    assert (count, through) == (3, 6)
    assert await store.count_sampled(engine, "t", after_id=through) == (0, 6)
    writer.submit(replace(trace(6), source="explore"))
    await writer.close()
    assert await store.count_sampled(engine, "t", after_id=through) == (1, 7)
    await engine.dispose()
