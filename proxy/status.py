"""`tracer status`: what each task does now, read from the store and the artifacts.

Per task: the served version (its pointer) and what its manifest certified; live
coverage and agreement over the last hour and day (the decisions and audits tables);
the last refit; the traces stored, by source.

**Fallback** is decided in each worker's memory (`proxy.monitor`), which this command
cannot see. It reads the same evidence instead: every audit of the served version, in
order, through the same sequential test (`proxy.evidence.agreement_test`), and the recent
decisions' out-of-distribution flags through the shift test. That is the verdict a
worker reaches when it starts, and the one a running worker reaches once it has read
those rows (within a poll); it is reported as derived, not as observed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from router.stats import cp_lower

from . import store
from .config import Config, TaskConfig, load_config
from .evidence import agreement_test, shift_test
from .models import ModelStore
from .monitor import SHIFT_HISTORY, Baseline
from .paths import sqlite_file
from .store import dashboard
from .store.schema import AuditRow, DecisionRow, TraceRow

WINDOWS = {"hour": timedelta(hours=1), "day": timedelta(days=1)}
MAX_ROWS = 1_000_000  # newest rows of a task read per table for the windows
SURROGATE = "surrogate"


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _aware(value: datetime) -> datetime:
    """A stored time; SQLite gives them back naive, in UTC as they were written."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else _aware(value).isoformat(timespec="seconds")


def served(models: ModelStore, task: TaskConfig) -> dict[str, Any] | None:
    """The pointer's version and what its manifest certified; None when none is served."""
    version = models.current(task.name)
    if version is None:
        return None
    manifest = models.manifest(task.name, version)
    if manifest is None:
        return {"version": version, "loadable": False}
    cal = manifest.calibration
    baseline = Baseline.of(cal)
    return {
        "version": version,
        "pinned": models.pinned(task.name),
        "loadable": manifest.deployed,
        "created_at": manifest.created_at,
        "target": manifest.alpha,
        "confidence": 1.0 - manifest.delta if manifest.delta is not None else None,
        "threshold": manifest.threshold,
        "certified_coverage": cal.coverage if cal is not None else None,
        "calibration_agreement": cal.agreement if cal is not None else None,
        "calibration_lower_bound": cal.lower_bound if cal is not None else None,
        "calibration_n": cal.n if cal is not None else None,
        "ood_share": cal.ood_share if cal is not None else None,
        "unusual_share": baseline.share,  # what the shift check expects
        "low_accept": baseline.low_accept,
        "test": {k: manifest.test.get(k) for k in ("n", "coverage", "agreement_handled")},
    }


async def live(engine: AsyncEngine, task: str, at: datetime) -> dict[str, dict[str, Any]]:
    """Requests, coverage, audits and agreement (and shadow figures) per window.

    Times have no index: the rows looked at are a task's newest `MAX_ROWS` of each table
    (on its (task, id) index), and a day with more decisions says it was cut short."""
    since = {name: at - span for name, span in WINDOWS.items()}
    after = {
        t: await dashboard.id_rows_back(engine, t, task, MAX_ROWS) for t in ("decisions", "audits")
    }
    recent = case((DecisionRow.created_at >= since["hour"], 1), else_=0).label("recent")
    keys = (DecisionRow.decision, DecisionRow.lane, DecisionRow.shadow, DecisionRow.shadow_agrees)
    decisions = (
        select(*keys, recent, func.count())
        .where(
            DecisionRow.task == task,
            DecisionRow.id > after["decisions"],
            DecisionRow.created_at >= since["day"],
        )
        .group_by(*keys, recent)
    )
    boundary = select(DecisionRow.created_at).where(DecisionRow.id == after["decisions"])
    audit_recent = case((AuditRow.created_at >= since["hour"], 1), else_=0).label("recent")
    audits = (
        select(AuditRow.agrees, audit_recent, func.count())
        .where(
            AuditRow.task == task,
            AuditRow.lane == SURROGATE,
            AuditRow.kind == "audit",
            AuditRow.id > after["audits"],
            AuditRow.created_at >= since["day"],
        )
        .group_by(AuditRow.agrees, audit_recent)
    )
    async with engine.connect() as conn:
        decision_rows = (await conn.execute(decisions)).all()
        audit_rows = (await conn.execute(audits)).all()
        cut = (await conn.execute(boundary)).scalar() if after["decisions"] else None
    out: dict[str, dict[str, Any]] = {}
    for name in WINDOWS:
        c: dict[str, int] = dict.fromkeys(
            (
                "requests",
                "handled",
                "deferred",
                "teacher",
                "by_lane",
                "audits",
                "agreed",
                "shadow",
                "shadow_handled",
                "shadow_judged",
                "shadow_agreed",
            ),
            0,
        )
        for decision, lane, shadow, agrees, is_recent, n in decision_rows:
            if name == "hour" and not is_recent:
                continue
            c["requests"] += n
            if decision in ("handled", "deferred", "teacher"):
                c[decision] += n
            if lane not in (None, SURROGATE, "teacher"):
                c["by_lane"] += n
            if shadow is not None:
                c["shadow"] += n
                if shadow == "handled":
                    c["shadow_handled"] += n
                    c["shadow_judged"] += n if agrees is not None else 0
                    c["shadow_agreed"] += n if agrees else 0
        for agrees, is_recent, n in audit_rows:
            if name == "day" or is_recent:
                c["audits"] += n
                c["agreed"] += n if agrees else 0
        window: dict[str, Any] = dict(c)
        window["coverage"] = _ratio(c["handled"], c["requests"])
        window["agreement"] = _ratio(c["agreed"], c["audits"])
        window["shadow_coverage"] = _ratio(c["shadow_handled"], c["shadow"])
        window["shadow_agreement"] = _ratio(c["shadow_agreed"], c["shadow_judged"])
        window["cut_short"] = cut is not None and _aware(cut) >= since[name]
        out[name] = window
    return out


async def fallback(
    engine: AsyncEngine, task: TaskConfig, version: str | None, baseline: Baseline
) -> dict[str, Any]:
    """The live checks of the served version, replayed from the store (module doc)."""
    if version is None:
        return {"state": "teacher", "reason": "no model is served: the teacher answers"}
    delta = 1.0 - task.confidence
    test = agreement_test(task.target, delta)
    query = (
        select(AuditRow.agrees)
        .where(AuditRow.task == task.name, AuditRow.version == version, AuditRow.lane == SURROGATE)
        .order_by(AuditRow.id)
    )
    async with engine.connect() as conn:
        async for (agrees,) in await conn.stream(query):
            test.add(not agrees)
    newest = await store.last_id(engine, "decisions", task.name)
    shift = shift_test(baseline.share, delta)
    for _, row_version, ood, _, accept_score in await store.decisions_after(
        engine, task.name, max(0, newest - SHIFT_HISTORY)
    ):
        if row_version == version and ood is not None:
            shift.add(baseline.unusual(ood, accept_score))
    n, bad = test.n_, test.events_
    out: dict[str, Any] = {
        "audits": n,
        "agreement": (n - bad) / n if n else None,
        "agreement_lower_bound": float(cp_lower(n - bad, n, delta)) if n else None,
        "drift_score": round(test.score, 4),
        "shift_alarm": shift.alarmed,
        "shift_score": round(shift.score, 4),
        "unusual_expected": round(baseline.share, 4),  # of inputs, from calibration
        "derived": "replayed from the store's audits as a worker does at start",
    }
    if test.alarmed:
        out["state"] = "fallback"
        out["reason"] = (
            f"version {version}: live agreement {out['agreement']:.3f} on {n} audits; the "
            f"evidence that it is below the target {task.target} reached its threshold"
        )
    elif task.mode == "shadow":
        out["state"], out["reason"] = "shadow", "shadow mode: the teacher answers every request"
    else:
        out["state"], out["reason"] = "serving", None
    return out


async def trace_counts(engine: AsyncEngine, task: str) -> dict[str, dict[str, int]]:
    """Stored traces by source: valid (a label) and invalid (an answer that was none)."""
    query = (
        select(TraceRow.source, TraceRow.valid, func.count())
        .where(TraceRow.task == task)
        .group_by(TraceRow.source, TraceRow.valid)
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    out: dict[str, dict[str, int]] = {}
    for source, valid, n in rows:
        slot = out.setdefault(str(source), {"valid": 0, "invalid": 0})
        slot["valid" if valid else "invalid"] += int(n)
    return out


def _refit(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    keys = ("outcome", "version", "reason", "n_traces", "seconds")
    return {**{k: row[k] for k in keys}, "created_at": _iso(row["created_at"])}


async def gather(config: Config, tasks: list[TaskConfig], at: datetime) -> list[dict[str, Any]]:
    models = ModelStore(config.artifacts.dir)
    file = sqlite_file(config.store.url)
    engine = (
        None if file is not None and not file.is_file() else store.create_engine(config.store.url)
    )
    out = []
    try:
        for task in tasks:
            model = served(models, task)
            entry: dict[str, Any] = {
                "task": task.name,
                "mode": task.mode,
                "target": task.target,
                "confidence": task.confidence,
                "served": model,
            }
            version = model["version"] if model is not None and model["loadable"] else None
            if engine is None:
                entry["store"] = f"no store at {file} yet (nothing has been served)"
            else:
                seen = model or {}
                baseline = Baseline(seen.get("unusual_share") or 0.0, seen.get("low_accept"))
                entry["live"] = await live(engine, task.name, at)
                entry["fallback"] = await fallback(engine, task, version, baseline)
                entry["last_refit"] = _refit(await store.last_refit(engine, task.name))
                entry["traces"] = await trace_counts(engine, task.name)
            if model is not None and not model["loadable"]:
                entry["fallback"] = {
                    **entry.get("fallback", {}),
                    "state": "teacher",
                    "reason": f"version {model['version']} cannot be served (refused or broken)",
                }
            out.append(entry)
    finally:
        if engine is not None:
            await engine.dispose()
    return out


def status_command(args: argparse.Namespace) -> int:
    from .status_text import render

    config = load_config(args.config)
    config.require_env("store", "artifacts")
    tasks = [t for t in config.tasks if args.task in (None, t.name)]
    if not tasks:
        print(
            f"tracer: no task {'named ' + repr(args.task) + ' ' if args.task else ''}in "
            f"{args.config}",
            file=sys.stderr,
        )
        return 2
    try:
        result = asyncio.run(gather(config, tasks, datetime.now(UTC)))
    except (SQLAlchemyError, OSError) as exc:
        first = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        print(f"tracer: cannot read the store: {first}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        render(result, sys.stdout)
    return 0
