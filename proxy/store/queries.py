"""Reads and small writes on the store: engines, schema, traces, leases, refits.

SQLite (aiosqlite) is the default and holds one host; PostgreSQL (asyncpg) works by
changing the URL and is what replicas on several hosts share.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import (
    ColumnElement,
    and_,
    event,
    func,
    insert,
    inspect,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from router.traces import ARGUMENTS_ONLY, TRAIN_ONLY

from .schema import AuditRow, Base, DecisionRow, LeaseRow, RefitRow, ToolListRow, TraceRow


def create_engine(url: str, busy_timeout_ms: int = 5000) -> AsyncEngine:
    """An async engine; SQLite gets WAL so readers (export, refit) never block the writer."""
    engine = create_async_engine(url)
    if make_url(url).get_backend_name() == "sqlite":

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            sqlite_pragmas(cursor, busy_timeout_ms)
            cursor.close()

    return engine


def sqlite_pragmas(db: Any, busy_timeout_ms: int) -> None:
    """A new SQLite connection's settings: a busy timeout, WAL, and normal syncs.

    `db` is anything with `execute`: a sqlite3 connection or a driver's cursor."""
    db.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    try:
        db.execute("PRAGMA journal_mode=WAL")  # kept in the file once set
    except sqlite3.OperationalError as exc:
        # Processes that open a new file at the same moment: SQLite refuses the switch
        # at once, without waiting, to all but one; that one sets it for the file.
        if "locked" not in str(exc):
            raise
    db.execute("PRAGMA synchronous=NORMAL")


SCHEMA_LOCK = 0x7472616365720001  # PostgreSQL advisory lock key of create_schema


SCHEMA_RACES = ("already exists", "duplicate column")  # SQLite: another process won
SCHEMA_ATTEMPTS = 10


async def create_schema(engine: AsyncEngine) -> None:
    """Create missing tables, and add columns that later versions brought (nullable).

    Workers and replicas that start together on a new database race to create it. On
    PostgreSQL an advisory lock serialises them; SQLite runs each DDL statement on its
    own, so a process that loses a race ("table traces already exists") looks again,
    and finds what the others made.
    """
    for attempt in range(SCHEMA_ATTEMPTS):
        try:
            await _create_schema(engine)
            return
        except OperationalError as exc:
            lost = engine.dialect.name == "sqlite" and any(r in str(exc) for r in SCHEMA_RACES)
            if not lost or attempt == SCHEMA_ATTEMPTS - 1:
                raise
            await asyncio.sleep(0.02 * (attempt + 1))


async def _create_schema(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Replicas starting together on a new database: without this lock, both see no
            # table and one CREATE TABLE fails (pg_type_typname_nsp_index). Held until commit.
            await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK})
        await conn.run_sync(Base.metadata.create_all)
        await conn.run_sync(_add_missing_columns)


def _add_missing_columns(conn: Connection) -> None:
    inspector = inspect(conn)
    for table in Base.metadata.sorted_tables:
        present = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in present and column.nullable:
                kind = column.type.compile(dialect=conn.dialect)
                conn.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}"))


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
        func.count().filter(TraceRow.valid.is_(True), TraceRow.source != TRAIN_ONLY),
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


async def audits_after(
    engine: AsyncEngine, task: str, after_id: int = 0, limit: int = 10_000
) -> list[tuple[int, str | None, str, int | None, bool, str, str | None, str | None]]:
    """(id, version, lane, cluster, agrees, kind, input, answer) of a task's audits after
    `after_id`."""
    query = (
        select(
            AuditRow.id, AuditRow.version, AuditRow.lane, AuditRow.cluster, AuditRow.agrees,
            AuditRow.kind, AuditRow.input, AuditRow.answer,
        )
        .where(AuditRow.task == task, AuditRow.id > after_id)
        .order_by(AuditRow.id)
        .limit(limit)
    )  # fmt: skip
    async with engine.connect() as conn:
        return [tuple(r) for r in (await conn.execute(query)).all()]  # type: ignore[misc]


async def latest_tools(engine: AsyncEngine, task: str) -> str | None:
    """The tools (JSON) a tool task's agent offered last, in any worker; None: never."""
    query = (
        select(ToolListRow.tools)
        .where(ToolListRow.task == task)
        .order_by(ToolListRow.id.desc())
        .limit(1)
    )
    async with engine.connect() as conn:
        tools: str | None = (await conn.execute(query)).scalar_one_or_none()
    return tools


async def decisions_after(
    engine: AsyncEngine, task: str, after_id: int = 0, limit: int = 10_000
) -> list[tuple[int, str | None, bool | None, str, float | None]]:
    """(id, model version, out of distribution, decision, accept score) of a task's
    decisions."""
    query = (
        select(
            DecisionRow.id,
            DecisionRow.model_version,
            DecisionRow.ood,
            DecisionRow.decision,
            DecisionRow.accept_score,
        )
        .where(DecisionRow.task == task, DecisionRow.id > after_id)
        .order_by(DecisionRow.id)
        .limit(limit)
    )
    async with engine.connect() as conn:
        return [tuple(r) for r in (await conn.execute(query)).all()]  # type: ignore[misc]


async def last_id(engine: AsyncEngine, table: str, task: str) -> int:
    """The newest row id of a task in a table (0 when it has none)."""
    ids, tasks = {
        "audits": (AuditRow.id, AuditRow.task),
        "decisions": (DecisionRow.id, DecisionRow.task),
        "traces": (TraceRow.id, TraceRow.task),
    }[table]
    async with engine.connect() as conn:
        value = (await conn.execute(select(func.max(ids)).where(tasks == task))).scalar()
    return int(value or 0)


async def count_fresh(engine: AsyncEngine, task: str, after_id: int) -> int:
    """Fresh traces (`_fresh`) after `after_id`: what a candidate whose data ends at
    `after_id` is judged on."""
    query = select(func.count()).where(*_fresh(task, after_id))
    async with engine.connect() as conn:
        return int((await conn.execute(query)).scalar_one())


async def fresh_traces_after(
    engine: AsyncEngine, task: str, after_id: int, limit: int = 5000
) -> list[tuple[int, str, str | None, str | None]]:
    """(id, input, label, raw_output) of the traces `count_fresh` counts, oldest first."""
    query = (
        select(TraceRow.id, TraceRow.input, TraceRow.label, TraceRow.raw_output)
        .where(*_fresh(task, after_id))
        .order_by(TraceRow.id)
        .limit(limit)
    )
    async with engine.connect() as conn:
        return [tuple(r) for r in (await conn.execute(query)).all()]  # type: ignore[misc]


async def fresh_cut(engine: AsyncEngine, task: str, keep: int, after_id: int) -> int | None:
    """The trace id just before the `keep` newest fresh traces after `after_id` (None if
    there are fewer): a fit that leaves those out can be judged on them at once."""
    query = (
        select(TraceRow.id)
        .where(*_fresh(task, after_id))
        .order_by(TraceRow.id.desc())
        .offset(keep - 1)
        .limit(1)
    )
    async with engine.connect() as conn:
        found = (await conn.execute(query)).scalar_one_or_none()
    return None if found is None else int(found) - 1


NOT_FRESH = (TRAIN_ONLY, ARGUMENTS_ONLY, "import")


def is_fresh(source: str) -> bool:
    """`_fresh`'s test of a trace's source, for rows already read."""
    return source not in NOT_FRESH


def _fresh(task: str, after_id: int) -> tuple[ColumnElement[bool], ...]:
    """Live traffic after `after_id`, sampled independently of any model: not `deferred`
    (a model's hard cases), nor `narrowed` (the tool a served version forced), nor
    `import` (an old log, loaded now but not drawn from the traffic since)."""
    return (
        TraceRow.task == task,
        TraceRow.id > after_id,
        TraceRow.valid.is_(True),
        TraceRow.source.not_in(NOT_FRESH),
    )


async def refit_attempts(engine: AsyncEngine, task: str) -> int:
    """How many fits of a task tested a calibration split, spending a share of delta: the
    index of the next one's share. (A fit refused before that spent nothing.)"""
    query = select(func.count()).where(
        RefitRow.task == task, or_(RefitRow.delta.is_(None), RefitRow.delta > 0)
    )
    async with engine.connect() as conn:
        return int((await conn.execute(query)).scalar_one())


async def whole_call_tests(engine: AsyncEngine, task: str) -> int:
    """How many fits of a tool task tested whole calls on calibration: the index of the
    next one's share of the whole-call budget. A row from before that budget existed
    (no `whole_delta`) counts if it spent delta at all, so an upgrade never overspends."""
    spent = or_(RefitRow.delta.is_(None), RefitRow.delta > 0)
    query = select(func.count()).where(
        RefitRow.task == task,
        or_(RefitRow.whole_delta > 0, and_(RefitRow.whole_delta.is_(None), spent)),
    )
    async with engine.connect() as conn:
        return int((await conn.execute(query)).scalar_one())


async def pending_candidates(engine: AsyncEngine, task: str) -> list[dict[str, Any]]:
    """Fits that passed the gate and wait to be compared with the served version."""
    query = (
        select(RefitRow)
        .where(RefitRow.task == task, RefitRow.outcome == "candidate")
        .order_by(RefitRow.id)
    )
    async with engine.connect() as conn:
        return [dict(r._mapping) for r in (await conn.execute(query)).all()]


async def settle_refit(
    engine: AsyncEngine, refit_id: int, outcome: str, reason: str | None
) -> None:
    """Record what became of a candidate: deployed, rejected, not_better or superseded."""
    async with engine.begin() as conn:
        await conn.execute(
            update(RefitRow).where(RefitRow.id == refit_id).values(outcome=outcome, reason=reason)
        )


async def refit_outcomes(engine: AsyncEngine, task: str) -> dict[str, str]:
    """Each fitted version's outcome, as settled (a candidate's is updated when judged)."""
    query = select(RefitRow.version, RefitRow.outcome).where(
        RefitRow.task == task, RefitRow.version.is_not(None)
    )
    async with engine.connect() as conn:
        return {str(v): str(o) for v, o in (await conn.execute(query)).all()}


async def refit_history(engine: AsyncEngine, task: str, limit: int = 50) -> list[dict[str, Any]]:
    query = select(RefitRow).where(RefitRow.task == task).order_by(RefitRow.id.desc()).limit(limit)
    async with engine.connect() as conn:
        return [dict(r._mapping) for r in (await conn.execute(query)).all()]
