"""Records and their writer: a bounded queue drained in batches by one task.

A response never waits for the database. What cannot be queued, or written, is
counted through `on_dropped`, never lost silently; a busy store is retried, and one
bad row never takes the rest of its batch with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import insert
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from router.traces import Source

from .queries import sqlite_pragmas
from .schema import AuditRow, DecisionRow, ToolListRow, TraceRow, now

log = logging.getLogger("tracer.store")


@dataclass(frozen=True)
class Trace:
    task: str
    input: str
    label: str | None
    raw_output: str | None
    model: str
    latency_ms: float
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost_usd: float | None = None
    source: Source = "teacher"
    created_at: datetime = field(default_factory=now)

    @property
    def valid(self) -> bool:
        return self.label is not None


@dataclass(frozen=True)
class Decision:
    task: str
    decision: str  # handled | deferred | teacher | passthrough
    reason: str
    latency_ms: float
    label: str | None = None
    accept_score: float | None = None
    model_version: str | None = None
    lane: str | None = None
    ood: bool | None = None
    cluster: int | None = None
    input: str | None = None
    shadow: str | None = None  # shadow mode: handled | deferred, what the model would do
    shadow_agrees: bool | None = None
    cost_usd: float | None = None
    created_at: datetime = field(default_factory=now)


@dataclass(frozen=True)
class Audit:
    """A served answer (or a lane's) compared with the teacher's for the same request."""

    task: str
    version: str | None
    agrees: bool
    lane: str = "surrogate"
    cluster: int | None = None
    input: str | None = None
    # audit: an answer that was served | confirm: a lane's answer served because it
    # confirmed the surrogate's guess | shadow: a lane checked on a request it did not serve
    kind: str = "audit"
    answer: str | None = None  # a lane's label, to tell later whether it confirmed a guess
    created_at: datetime = field(default_factory=now)


@dataclass(frozen=True)
class ToolList:
    """A tool task's tools, as the agent offered them, when they changed."""

    task: str
    tools: str  # JSON
    created_at: datetime = field(default_factory=now)


Record = Trace | Decision | Audit | ToolList


class StoreWriter:
    """Owns the queue and the task that drains it in batches."""

    def __init__(
        self,
        engine: AsyncEngine,
        queue_size: int = 10_000,
        on_stored: Callable[[list[Record]], None] | None = None,
        on_dropped: Callable[[Record], None] | None = None,
        batch_size: int = 500,
        linger_s: float = 0.05,
        retry_s: float = 60.0,
        busy_timeout_ms: int = 5000,
    ) -> None:
        self.engine = engine
        self.queue_size = queue_size
        self.on_stored = on_stored
        self.on_dropped = on_dropped
        self.batch_size = batch_size
        # Wait this long after the first record for others, so that light traffic is
        # not written one transaction per request.
        self.linger_s = linger_s
        self.retry_s = retry_s  # how long a busy store is retried before records are dropped
        # SQLite batches are written by the sqlite3 module in one worker-thread call, one
        # INSERT of many rows a table: through aiosqlite, each of a batch's half-dozen
        # awaits waited for a turn of a busy event loop, and at 1,000 requests a second
        # a batch of 500 took most of a second, so the queue filled and records dropped.
        self._sqlite_path = _sqlite_path(engine)
        self._sqlite: sqlite3.Connection | None = None
        self.busy_timeout_ms = busy_timeout_ms
        self._queue: asyncio.Queue[Record] = asyncio.Queue(maxsize=queue_size)
        self._task: asyncio.Task[None] | None = None
        # What /healthz and /readyz report (wall-clock seconds; None: never yet).
        self.last_write_ok_at: float | None = None
        self.last_error: str | None = None  # the last failed (or retried) write, in short
        self.last_error_at: float | None = None
        self.last_dropped_at: float | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="tracer-store-writer")

    def submit(self, record: Record) -> bool:
        """Queue a record without waiting; False (and counted) when the queue is full."""
        try:
            self._queue.put_nowait(record)
        except asyncio.QueueFull:
            self.last_dropped_at = time.time()
            if self.on_dropped is not None:
                self.on_dropped(record)
            return False
        return True

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    @property
    def full(self) -> bool:
        return self._queue.full()

    @property
    def failing(self) -> bool:
        """The last write attempt failed (or is being retried) and none succeeded since."""
        return self.last_error_at is not None and (
            self.last_write_ok_at is None or self.last_error_at > self.last_write_ok_at
        )

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            # Light traffic waits a moment for company; a backlog is written at once, or
            # the linger alone would cap the writer at batch_size / linger_s records a second.
            if self.linger_s > 0 and self._queue.qsize() < self.batch_size:
                await asyncio.sleep(self.linger_s)
            while len(batch) < self.batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._write(batch)
            for _ in batch:
                self._queue.task_done()

    async def _write(self, batch: list[Record]) -> None:
        """Write a batch; retry a busy store, and never let one bad row sink the others.

        A locked or unreachable store is retried with backoff for up to `retry_s`. Any
        other failure splits the batch in halves, down to the one row that cannot be
        written, which alone is dropped (and counted).
        """
        delay, deadline = 0.05, time.monotonic() + self.retry_s
        while True:
            try:
                await self._insert(batch)
            except Exception as exc:
                self.last_error, self.last_error_at = f"{type(exc).__name__}: {exc}", time.time()
                if _transient(exc) and time.monotonic() + delay < deadline:
                    log.warning("store busy (%s); retrying %d records in %.2f s",
                                type(exc).__name__, len(batch), delay)  # fmt: skip
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
                    continue
                if len(batch) > 1:
                    half = len(batch) // 2
                    await self._write(batch[:half])
                    await self._write(batch[half:])
                    return
                log.error("store write failed; 1 %s record lost: %s",
                          type(batch[0]).__name__, exc)  # fmt: skip
                self.last_dropped_at = time.time()
                if self.on_dropped is not None:
                    self.on_dropped(batch[0])
                return
            if self.on_stored is not None:
                self.on_stored(batch)
            return

    async def _insert(self, batch: list[Record]) -> None:
        if self._sqlite_path is not None:
            await asyncio.to_thread(self._insert_sqlite, batch)
            return
        traces = [_trace_row(r) for r in batch if isinstance(r, Trace)]
        decisions = [_storable_row(vars(r)) for r in batch if isinstance(r, Decision)]
        audits = [_storable_row(vars(r)) for r in batch if isinstance(r, Audit)]
        tools = [_storable_row(vars(r)) for r in batch if isinstance(r, ToolList)]
        tables = ((TraceRow, traces), (DecisionRow, decisions), (AuditRow, audits),
                  (ToolListRow, tools))  # fmt: skip
        async with self.engine.begin() as conn:
            for table, rows in tables:
                if rows:
                    await conn.execute(insert(table), rows)

    def _insert_sqlite(self, batch: list[Record]) -> None:
        """One transaction, one INSERT of many rows per table (blocking: a worker thread)."""
        if self._sqlite is None:
            assert self._sqlite_path is not None
            self._sqlite = sqlite3.connect(
                self._sqlite_path, isolation_level=None, check_same_thread=False
            )
            sqlite_pragmas(self._sqlite, self.busy_timeout_ms)
        tables = (
            ("traces", [_trace_row(r) for r in batch if isinstance(r, Trace)]),
            ("decisions", [_storable_row(vars(r)) for r in batch if isinstance(r, Decision)]),
            ("audits", [_storable_row(vars(r)) for r in batch if isinstance(r, Audit)]),
            ("tool_lists", [_storable_row(vars(r)) for r in batch if isinstance(r, ToolList)]),
        )
        conn = self._sqlite
        conn.execute("BEGIN")
        try:
            for table, rows in tables:
                if not rows:
                    continue
                columns = list(rows[0])
                per_statement = SQLITE_MAX_VARIABLES // len(columns)
                for start in range(0, len(rows), per_statement):
                    conn.execute(
                        *_sqlite_insert(table, columns, rows[start : start + per_statement])
                    )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def flush(self) -> None:
        await self._queue.join()

    async def close(self, timeout_s: float = 30.0) -> None:
        """Write what is queued, then stop: called on shutdown, bounded by `timeout_s`."""
        if self._task is None:
            return
        try:
            await asyncio.wait_for(self.flush(), timeout_s)
        except TimeoutError:
            log.error("shutdown: %d queued records abandoned after %.0f s of trying to write",
                      self.pending, timeout_s)  # fmt: skip
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        if self._sqlite is not None:
            self._sqlite.close()
            self._sqlite = None


SQLITE_MAX_VARIABLES = 32_766  # SQLite 3.32 and later


def _sqlite_value(value: Any) -> Any:
    """A value as SQLAlchemy's SQLite dialect stores it (naive UTC text, 0/1)."""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(value, bool):
        return int(value)
    return value


def _sqlite_insert(
    table: str, columns: list[str], rows: list[dict[str, Any]]
) -> tuple[str, tuple[Any, ...]]:
    """One INSERT statement for many rows, and its parameters in order."""
    group = "(" + ",".join("?" * len(columns)) + ")"
    sql = f"INSERT INTO {table} ({','.join(columns)}) VALUES " + ",".join([group] * len(rows))
    return sql, tuple(_sqlite_value(row[c]) for row in rows for c in columns)


def _transient(exc: BaseException) -> bool:
    """A store that is busy or away for a while, not a row it cannot take."""
    if isinstance(exc, sqlite3.OperationalError):
        return any(word in str(exc) for word in ("locked", "busy", "unable to open"))
    return isinstance(exc, OperationalError | InterfaceError | DisconnectionError | OSError)


def _sqlite_path(engine: AsyncEngine) -> str | None:
    """The database file of an SQLite engine (None for another backend, or in memory)."""
    if engine.dialect.name != "sqlite":
        return None
    database = engine.url.database
    return database if database and database != ":memory:" else None


def storable(text: str) -> str:
    """Text every backend can hold: lone surrogates and NUL become U+FFFD."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def _storable_row(row: dict[str, Any]) -> dict[str, Any]:
    """A copy of a record's fields with every text made storable."""
    return {k: storable(v) if isinstance(v, str) else v for k, v in row.items()}


def _trace_row(trace: Trace) -> dict[str, Any]:
    # vars(), not dataclasses.asdict: asdict deep-copies every field, datetimes included,
    # and was most of the writer's CPU.
    row = _storable_row(vars(trace))
    row["valid"] = trace.valid
    return row
