"""The dashboard's reads: per-minute counts of new rows, and the newest requests.

Every query names a task and an id range, so it runs on the (task, id) indexes and
reads only rows it has not seen: the dashboard keeps the counts (`proxy.dashboard.series`)
and asks the store for what arrived since. Counting happens in the database, grouped by
minute, so a refresh moves a few dozen rows however busy the task is.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Integer, cast, extract, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from .schema import AuditRow, DecisionRow, TraceRow

_TABLES: dict[str, Any] = {"decisions": DecisionRow, "audits": AuditRow, "traces": TraceRow}


def _minute(column: Any, dialect: str) -> ColumnElement[Any]:
    """Minutes since the epoch of a timestamp (stored as naive UTC text on SQLite)."""
    if dialect == "sqlite":
        return cast(func.strftime("%s", column), Integer) // 60
    return func.floor(extract("epoch", column) / 60)


async def newest_id(engine: AsyncEngine, table: str, task: str) -> int:
    row = _TABLES[table]
    async with engine.connect() as conn:
        value = (await conn.execute(select(func.max(row.id)).where(row.task == task))).scalar()
    return int(value or 0)


async def id_rows_back(engine: AsyncEngine, table: str, task: str, rows: int) -> int:
    """The id `rows` rows before a task's newest (0 when it has fewer): where a first read
    starts, so it is bounded however long the task has run."""
    row = _TABLES[table]
    query = select(row.id).where(row.task == task).order_by(row.id.desc()).limit(1).offset(rows)
    async with engine.connect() as conn:
        value = (await conn.execute(query)).scalar()
    return int(value or 0)


async def decision_counts(
    engine: AsyncEngine, task: str, after_id: int, upto_id: int
) -> list[tuple[int, str, bool | None, str | None, bool | None, int]]:
    """(minute, decision, ood, shadow, shadow_agrees, count) of a task's decisions in
    (after_id, upto_id]."""
    minute = _minute(DecisionRow.created_at, engine.dialect.name).label("minute")
    keys = (minute, DecisionRow.decision, DecisionRow.ood, DecisionRow.shadow,
            DecisionRow.shadow_agrees)  # fmt: skip
    query = (
        select(*keys, func.count())
        .where(DecisionRow.task == task, DecisionRow.id > after_id, DecisionRow.id <= upto_id)
        .group_by(*keys)
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return [(int(m), str(d), o, s, a, int(n)) for m, d, o, s, a, n in rows]


async def audit_counts(
    engine: AsyncEngine, task: str, after_id: int, upto_id: int
) -> list[tuple[int, bool, int]]:
    """(minute, agrees, count) of the audits of served answers in (after_id, upto_id]."""
    minute = _minute(AuditRow.created_at, engine.dialect.name).label("minute")
    query = (
        select(minute, AuditRow.agrees, func.count())
        .where(
            AuditRow.task == task,
            AuditRow.id > after_id,
            AuditRow.id <= upto_id,
            AuditRow.kind.in_(("audit", "confirm")),
        )
        .group_by(minute, AuditRow.agrees)
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return [(int(m), bool(a), int(n)) for m, a, n in rows]


async def trace_counts(
    engine: AsyncEngine, task: str, after_id: int, upto_id: int
) -> list[tuple[int, int, int, float]]:
    """(minute, teacher answers, priced answers, their cost in USD) in (after_id, upto_id]."""
    minute = _minute(TraceRow.created_at, engine.dialect.name).label("minute")
    query = (
        select(minute, func.count(), func.count(TraceRow.cost_usd), func.sum(TraceRow.cost_usd))
        .where(TraceRow.task == task, TraceRow.id > after_id, TraceRow.id <= upto_id)
        .group_by(minute)
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return [(int(m), int(n), int(p), float(c or 0.0)) for m, n, p, c in rows]


async def recent_requests(
    engine: AsyncEngine, task: str, limit: int, chars: int = 4096
) -> list[dict[str, Any]]:
    """A task's newest decisions that kept their input (its first `chars`: all that the
    embedders read), newest first."""
    query = (
        select(
            DecisionRow.id, DecisionRow.created_at, DecisionRow.decision, DecisionRow.reason,
            DecisionRow.label, DecisionRow.ood, DecisionRow.cluster,
            func.substr(DecisionRow.input, 1, chars).label("input"), DecisionRow.model_version,
        )
        .where(DecisionRow.task == task, DecisionRow.input.is_not(None))
        .order_by(DecisionRow.id.desc())
        .limit(limit)
    )  # fmt: skip
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return [dict(r._mapping) for r in rows]


def epoch(value: datetime | None) -> float | None:
    """Seconds since the epoch; a naive timestamp is UTC, as the store writes them."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()
