"""The trace store: teacher answers and routing decisions, behind SQLAlchemy 2 async.

SQLite (aiosqlite) is the default; PostgreSQL works by changing the URL. Writes go
through `StoreWriter`, a bounded queue drained by one task, so a slow disk never
delays a response; what cannot be queued is counted, never lost silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Text,
    event,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from training.traces import SELECTED

log = logging.getLogger("tracer.store")


def _now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class TraceRow(Base):
    """One teacher answer on a task route: the labelled pair the surrogate learns from."""

    __tablename__ = "traces"
    __table_args__ = (Index("ix_traces_task_id", "task", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task: Mapped[str] = mapped_column(String(128))
    input: Mapped[str] = mapped_column(Text)
    label: Mapped[str | None] = mapped_column(String(256))
    valid: Mapped[bool] = mapped_column(Boolean)
    raw_output: Mapped[str | None] = mapped_column(Text)
    model: Mapped[str] = mapped_column(String(256))
    source: Mapped[str] = mapped_column(String(32), default="teacher")
    latency_ms: Mapped[float] = mapped_column(Float)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    cost_usd: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class DecisionRow(Base):
    """Every request on a task route, whoever answered it."""

    __tablename__ = "decisions"
    __table_args__ = (Index("ix_decisions_task_id", "task", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task: Mapped[str] = mapped_column(String(128))
    decision: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(Text)
    label: Mapped[str | None] = mapped_column(String(256))
    accept_score: Mapped[float | None] = mapped_column(Float)
    model_version: Mapped[str | None] = mapped_column(String(128))
    latency_ms: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class LeaseRow(Base):
    """Who may refit a task now: one holder across workers and replicas on one store."""

    __tablename__ = "leases"

    task: Mapped[str] = mapped_column(String(128), primary_key=True)
    holder: Mapped[str] = mapped_column(String(256))
    expires_at: Mapped[float] = mapped_column(Float)


class RefitRow(Base):
    """One fit attempt and its outcome; the newest says which traces it covered."""

    __tablename__ = "refits"
    __table_args__ = (Index("ix_refits_task_id", "task", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task: Mapped[str] = mapped_column(String(128))
    outcome: Mapped[str] = mapped_column(String(32))  # deployed | refused | failed
    version: Mapped[str | None] = mapped_column(String(64))
    n_traces: Mapped[int] = mapped_column(Integer)
    last_trace_id: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(Text)
    seconds: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


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
    source: str = "teacher"
    created_at: datetime = field(default_factory=_now)

    @property
    def valid(self) -> bool:
        return self.label is not None


@dataclass(frozen=True)
class Decision:
    task: str
    decision: str
    reason: str
    latency_ms: float
    label: str | None = None
    accept_score: float | None = None
    model_version: str | None = None
    created_at: datetime = field(default_factory=_now)


Record = Trace | Decision


def create_engine(url: str, busy_timeout_ms: int = 5000) -> AsyncEngine:
    """An async engine; SQLite gets WAL so readers (export, refit) never block the writer."""
    engine = create_async_engine(url)
    if make_url(url).get_backend_name() == "sqlite":

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            cursor.close()

    return engine


async def create_schema(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)


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
        self._queue: asyncio.Queue[Record] = asyncio.Queue(maxsize=queue_size)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="tracer-store-writer")

    def submit(self, record: Record) -> bool:
        """Queue a record without waiting; False (and counted) when the queue is full."""
        try:
            self._queue.put_nowait(record)
        except asyncio.QueueFull:
            if self.on_dropped is not None:
                self.on_dropped(record)
            return False
        return True

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            if self.linger_s > 0:
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
                if self.on_dropped is not None:
                    self.on_dropped(batch[0])
                return
            if self.on_stored is not None:
                self.on_stored(batch)
            return

    async def _insert(self, batch: list[Record]) -> None:
        traces = [_trace_row(r) for r in batch if isinstance(r, Trace)]
        decisions = [_storable_row(asdict(r)) for r in batch if isinstance(r, Decision)]
        async with self.engine.begin() as conn:
            if traces:
                await conn.execute(insert(TraceRow), traces)
            if decisions:
                await conn.execute(insert(DecisionRow), decisions)

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


def _transient(exc: BaseException) -> bool:
    """A store that is busy or away for a while, not a row it cannot take."""
    return isinstance(exc, OperationalError | InterfaceError | DisconnectionError | OSError)


def storable(text: str) -> str:
    """Text every backend can hold: lone surrogates and NUL become U+FFFD."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def _storable_row(row: dict[str, Any]) -> dict[str, Any]:
    return {k: storable(v) if isinstance(v, str) else v for k, v in row.items()}


def _trace_row(trace: Trace) -> dict[str, Any]:
    row = _storable_row(asdict(trace))
    row["valid"] = trace.valid
    return row


async def iter_traces(
    engine: AsyncEngine, task: str, valid_only: bool = True, after_id: int = 0
) -> AsyncIterator[dict[str, Any]]:
    """A task's traces in arrival order, streamed rather than loaded at once."""
    query = select(TraceRow).where(TraceRow.task == task, TraceRow.id > after_id)
    if valid_only:
        query = query.where(TraceRow.valid.is_(True))
    query = query.order_by(TraceRow.id)
    async with engine.connect() as conn:
        result = await conn.stream(query)
        async for row in result:
            yield dict(row._mapping)


async def count_traces(engine: AsyncEngine, task: str, after_id: int = 0) -> int:
    query = select(func.count()).where(
        TraceRow.task == task, TraceRow.valid.is_(True), TraceRow.id > after_id
    )
    async with engine.connect() as conn:
        return int((await conn.execute(query)).scalar_one())


async def count_sampled(engine: AsyncEngine, task: str, after_id: int = 0) -> tuple[int, int]:
    """(valid traces that sample the traffic, the last trace id looked at) after `after_id`.

    Callers count on from the returned id, so a poll reads only the new rows.
    """
    query = select(
        func.count().filter(TraceRow.valid.is_(True), TraceRow.source != SELECTED),
        func.max(TraceRow.id),
    ).where(TraceRow.task == task, TraceRow.id > after_id)
    async with engine.connect() as conn:
        count, last = (await conn.execute(query)).one()
    return int(count), int(last) if last is not None else after_id


async def acquire_lease(engine: AsyncEngine, task: str, holder: str, ttl_s: float) -> bool:
    """Take or renew the task's lease; one conditional write, so two takers cannot both win."""
    now = time.time()
    async with engine.begin() as conn:
        taken = await conn.execute(
            update(LeaseRow)
            .where(
                LeaseRow.task == task,
                or_(LeaseRow.holder == holder, LeaseRow.expires_at < now),
            )
            .values(holder=holder, expires_at=now + ttl_s)
        )
        if taken.rowcount == 1:
            return True
    try:
        async with engine.begin() as conn:
            await conn.execute(
                insert(LeaseRow).values(task=task, holder=holder, expires_at=now + ttl_s)
            )
    except IntegrityError:
        return False
    return True


async def release_lease(engine: AsyncEngine, task: str, holder: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            update(LeaseRow)
            .where(LeaseRow.task == task, LeaseRow.holder == holder)
            .values(expires_at=0.0)
        )


async def served_coverage(
    engine: AsyncEngine, task: str, version: str, last: int = 5000
) -> tuple[int, int]:
    """(handled, consulted) over the last `last` requests a model version decided."""
    recent = (
        select(DecisionRow.decision)
        .where(DecisionRow.task == task, DecisionRow.model_version == version)
        .order_by(DecisionRow.id.desc())
        .limit(last)
        .subquery()
    )
    query = select(func.count(), func.count().filter(recent.c.decision == "handled"))
    async with engine.connect() as conn:
        consulted, handled = (await conn.execute(query.select_from(recent))).one()
    return int(handled), int(consulted)


async def last_refit(engine: AsyncEngine, task: str) -> dict[str, Any] | None:
    query = select(RefitRow).where(RefitRow.task == task).order_by(RefitRow.id.desc()).limit(1)
    async with engine.connect() as conn:
        row = (await conn.execute(query)).first()
    return dict(row._mapping) if row is not None else None


async def record_refit(engine: AsyncEngine, **values: Any) -> None:
    async with engine.begin() as conn:
        await conn.execute(insert(RefitRow).values(**values))
