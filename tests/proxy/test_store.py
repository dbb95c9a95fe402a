"""The store writer: batches, flushes on close, and counts what it cannot keep."""

from __future__ import annotations

import asyncio
import sqlite3
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


async def test_one_unstorable_row_never_takes_the_batch_with_it(tmp_path):
    """A lone surrogate or a NUL is made storable (U+FFFD); a row that still fails is
    dropped alone, and every other row of its batch is written."""
    engine = store.create_engine(f"sqlite+aiosqlite:///{tmp_path / 's.db'}")
    await store.create_schema(engine)
    dropped: list[store.Record] = []
    writer = store.StoreWriter(engine, on_dropped=dropped.append)
    writer.start()
    for i in range(300):
        text = f"text {i}" + ("\ud800" if i == 7 else "") + ("\x00" if i == 8 else "")
        writer.submit(replace(trace(i), input=text, raw_output="a\udc00" if i == 9 else "a"))
    writer.submit(store.Decision(task="t", decision="handled", reason="\ud800", latency_ms=1.0))
    # A row no schema takes (a label longer than the column is fine in SQLite, so force
    # a type error): alone in failing.
    writer.submit(replace(trace(300), latency_ms=object()))  # type: ignore[arg-type]
    await writer.close()
    rows = [row async for row in store.iter_traces(engine, "t")]
    assert len(rows) == 300
    assert rows[7]["input"] == "text 7\ufffd" and rows[8]["input"] == "text 8\ufffd"
    assert rows[9]["raw_output"] == "a\ufffd"
    assert len(dropped) == 1 and dropped[0].input == "text 300"
    await engine.dispose()


async def test_a_locked_store_is_retried_before_anything_is_dropped(tmp_path):
    """Another process holds the database locked for longer than SQLite waits: the writer
    backs off and retries, and loses nothing."""
    import asyncio
    import sqlite3
    import threading

    db = tmp_path / "s.db"
    engine = store.create_engine(f"sqlite+aiosqlite:///{db}", busy_timeout_ms=100)
    await store.create_schema(engine)
    dropped: list[store.Record] = []
    writer = store.StoreWriter(engine, on_dropped=dropped.append, linger_s=0, busy_timeout_ms=100)
    writer.start()
    locked, release = threading.Event(), threading.Event()

    def hold_lock() -> None:
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        locked.set()
        release.wait(10)
        conn.execute("COMMIT")
        conn.close()

    holder = threading.Thread(target=hold_lock)
    holder.start()
    await asyncio.to_thread(locked.wait, 5)
    for i in range(500):
        writer.submit(trace(i))
    await asyncio.sleep(1.5)  # many of SQLite's own 100 ms waits
    release.set()
    await asyncio.to_thread(holder.join)
    await writer.close()
    assert dropped == []
    assert await store.count_traces(engine, "t") == 500
    await engine.dispose()


async def test_an_older_store_gains_the_columns_added_since(tmp_path):
    """An audits table from before lanes recorded their label: create_schema adds the
    column, the rows already there read back with None, and new ones keep it."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE audits (id INTEGER PRIMARY KEY AUTOINCREMENT, task VARCHAR(128), "
            "version VARCHAR(128), lane VARCHAR(256), cluster INTEGER, agrees BOOLEAN, "
            "input TEXT, kind VARCHAR(16), created_at DATETIME)"
        )
        db.execute(
            "INSERT INTO audits (task, version, lane, cluster, agrees, input, kind, created_at)"
            " VALUES ('t', 'v1', 'small', 2, 1, 'hello', 'shadow', '2026-11-01 00:00:00')"
        )
    engine = store.create_engine(f"sqlite+aiosqlite:///{path}")
    await store.create_schema(engine)
    writer = store.StoreWriter(engine, linger_s=0)
    writer.start()
    writer.submit(store.Audit("t", "v1", False, "small", 2, "again", "shadow", "refund"))
    await writer.close()
    rows = await store.audits_after(engine, "t")
    assert [(r[6], r[7]) for r in rows] == [("hello", None), ("again", "refund")]
    await engine.dispose()


async def test_processes_that_start_together_create_one_sqlite_store(tmp_path):
    """`tracer serve --workers 2` on a new file: every worker creates the schema at the
    same moment, and none may fail ("table traces already exists", or "database is
    locked" while another switches the file to WAL)."""
    for attempt in range(5):
        path = tmp_path / f"new{attempt}.db"
        engines = [store.create_engine(f"sqlite+aiosqlite:///{path}") for _ in range(3)]
        await asyncio.gather(*(store.create_schema(engine) for engine in engines))
        for engine in engines:
            await engine.dispose()
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        assert {"traces", "decisions", "audits", "refits"} <= tables
