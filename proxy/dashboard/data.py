"""What `GET /dashboard/data` returns: one task's live state, gathered and cached.

A dashboard left open refreshes every few seconds, and several may be open, so the
server's work is bounded three ways: a payload is cached per (task, range) for
`CACHE_S`; the store is asked only for rows it has not counted yet (`Series`), on its
(task, id) indexes; the map's embeddings and projections run in a worker thread, once
per version for the held-out points and once per live request. Nothing here runs unless
someone is looking.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from router.stats import cp_lower

from .. import store
from ..config import TaskConfig
from ..models import LiveModel
from ..state import ProxyState
from ..store import dashboard as queries
from .pointmap import TEXT_CHARS, MapUnavailable, Projection, build_projection
from .report import read_cards
from .series import RANGES, Series, ratio

log = logging.getLogger("tracer.dashboard")

CACHE_S = 4.0  # a payload is this fresh at most; the page refreshes every REFRESH_S
REFRESH_S = 5
LIVE_POINTS = 300  # newest requests pinned on the map
RECENT_ROWS = 25  # newest requests listed under it
BACKFILL_ROWS = 200_000  # a first read counts at most this many rows back per table
REFIT_ROWS = 20


@dataclass
class TaskView:
    """What the dashboard keeps for one task between refreshes."""

    series: Series = field(default_factory=Series)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    counted_at: float = -math.inf  # monotonic time of the last read of new rows
    projection: Projection | None = None
    map_note: tuple[str, str] | None = None  # (version, why it has no map)
    live_xy: dict[int, tuple[float, float]] = field(default_factory=dict)


def _finite(value: float) -> float | None:
    return round(value, 5) if math.isfinite(value) else None


def _trim(text: object, limit: int) -> str | None:
    if text is None:
        return None
    value = str(text)
    return value if len(value) <= limit else value[: limit - 1] + "…"


class Dashboard:
    """The dashboard's data for every task of one proxy."""

    def __init__(self, state: ProxyState) -> None:
        self.state = state
        self.views: dict[str, TaskView] = {}
        self._cache: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}

    @property
    def tasks(self) -> list[str]:
        return [t.name for t in self.state.config.tasks]

    async def data(self, task: str, range_name: str) -> dict[str, Any]:
        """The payload for a task and range (both checked by the caller)."""
        key = (task, range_name)
        cached = self._cache.get(key)
        if cached is not None and time.monotonic() < cached[0]:
            return cached[1]
        view = self.views.setdefault(task, TaskView())
        async with view.lock:  # viewers arriving together wait for one computation
            cached = self._cache.get(key)
            if cached is not None and time.monotonic() < cached[0]:
                return cached[1]
            payload = await self._gather(task, range_name, view)
            self._cache[key] = (time.monotonic() + CACHE_S, payload)
            return payload

    async def _gather(self, task: str, range_name: str, view: TaskView) -> dict[str, Any]:
        config = self.state.config.task(task)
        assert config is not None
        engine = self.state.engine
        now = time.time()
        if time.monotonic() - view.counted_at >= CACHE_S:
            await self._count(task, view.series, now)
            view.counted_at = time.monotonic()
        window = view.series.window(range_name, now)
        live = self.state.models.get(task)
        recent = await queries.recent_requests(engine, task, LIVE_POINTS)
        map_data = await self._map(view, live, recent)
        path = self._report_path(task, live)
        cards = await asyncio.to_thread(read_cards, path, recent, self.state.lanes.get(task))
        refits = await store.refit_history(engine, task, REFIT_ROWS)
        totals = window.pop("totals")
        return {
            "generated_at": datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds"),
            "refresh_seconds": REFRESH_S,
            "tasks": self.tasks,
            "task": task,
            "range": range_name,
            "ranges": list(RANGES),
            "served": self._served(config, live),
            "checks": self._checks(config),
            "series": {**window, "history_from": view.series.history_from},
            "totals": totals,
            "savings": self._savings(task, totals),
            "shadow": self._shadow(config, totals),
            "refits": [_refit(row) for row in refits],
            "report": cards,
            "map": map_data,
            "recent": [_request(row, 300) for row in recent[:RECENT_ROWS]],
        }

    # -- counts -----------------------------------------------------------------------------
    async def _count(self, task: str, series: Series, now: float) -> None:
        """Add the rows that arrived since the last read to the task's minutes."""
        engine = self.state.engine
        readers = (
            ("decisions", queries.decision_counts, series.add_decisions),
            ("audits", queries.audit_counts, series.add_audits),
            ("traces", queries.trace_counts, series.add_traces),
        )
        for table, count, add in readers:
            top = await queries.newest_id(engine, table, task)
            after = series.after.get(table)
            cut = False
            if after is None or top < after:  # a first read (or a store started anew)
                after = await queries.id_rows_back(engine, table, task, BACKFILL_ROWS)
                cut = after > 0
            if top > after:
                rows: Any = await count(engine, task, after, top)
                add(rows)
                if cut and table == "decisions" and rows:
                    series.history_from = min(r[0] for r in rows) * 60.0
            series.after[table] = top
        series.prune(now)

    # -- the map ----------------------------------------------------------------------------
    async def _map(
        self, view: TaskView, live: LiveModel | None, recent: list[dict[str, Any]]
    ) -> dict[str, Any]:
        empty: dict[str, Any] = {"version": None, "heldout": [], "live": [], "centres": []}
        if live is None:
            return {**empty, "note": "no model is served yet: every request goes to the teacher"}
        if view.projection is None or view.projection.version != live.version:
            if view.map_note is not None and view.map_note[0] == live.version:
                return {**empty, "version": live.version, "note": view.map_note[1]}
            try:
                view.projection = await asyncio.to_thread(
                    build_projection, live.router, live.version
                )
            except MapUnavailable as exc:
                view.map_note = (live.version, str(exc))
                return {**empty, "version": live.version, "note": str(exc)}
            except Exception:
                log.exception("dashboard: cannot draw the map of version %s", live.version)
                view.map_note = (live.version, "the map could not be computed (see the log)")
                return {**empty, "version": live.version, "note": view.map_note[1]}
            view.live_xy = {}
        projection = view.projection
        fresh = [r for r in recent if r["id"] not in view.live_xy]
        if fresh:
            xy = await asyncio.to_thread(
                projection.project, live.router, [str(r["input"]) for r in fresh]
            )
            for row, (x, y) in zip(fresh, xy.tolist(), strict=True):
                view.live_xy[row["id"]] = (x, y)
        wanted = {r["id"] for r in recent}
        view.live_xy = {k: v for k, v in view.live_xy.items() if k in wanted}
        points = []
        for row in recent:
            x, y = view.live_xy[row["id"]]
            if _finite(x) is None or _finite(y) is None:
                continue
            points.append({**_request(row, TEXT_CHARS), "x": _finite(x), "y": _finite(y)})
        return {
            "version": projection.version,
            "method": "2-D PCA of similarities to the version's cluster centroids, "
            "fitted on its held-out inputs",
            "note": None,
            "origin": projection.origin,
            "heldout": projection.heldout,
            "centres": projection.centres,
            "live": points,
        }

    def _report_path(self, task: str, live: LiveModel | None) -> Path | None:
        models = self.state.models.store
        if live is not None:
            path = models.version_dir(task, live.version) / "report.json"
            if path.is_file():
                return path
        return models.latest_report(task, "report.json")

    # -- figures ----------------------------------------------------------------------------
    def _served(self, config: TaskConfig, live: LiveModel | None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "version": None,
            "mode": str(getattr(config, "mode", "serve")),
            "target": config.target,
            "confidence": config.confidence,
        }
        if live is not None:
            cal = live.manifest.calibration
            out.update(
                version=live.version,
                threshold=live.router.threshold,
                certified_coverage=live.certified_coverage,
                calibration_agreement=cal.agreement if cal is not None else None,
                created_at=live.manifest.created_at,
            )
        return out

    def _checks(self, config: TaskConfig) -> dict[str, Any]:
        monitor = self.state.monitor.task(config.name)
        check = monitor.check
        out: dict[str, Any] = {
            "version": None,
            "fallback": monitor.fallback_reason,
            "delta": monitor.delta,
            "target": config.target,
        }
        if check is None:
            return out
        n, agreed = len(check.recent), sum(check.recent)
        out.update(
            version=check.version,
            audits=monitor.version_audits,
            window=n,
            agreement=check.live_agreement,
            agreement_lower=float(cp_lower(agreed, n, monitor.delta)) if n else None,
            drift_score=check.agreement.score,
            shift_score=check.shift.score,
            ood_rate=check.shift.rate,
            ood_expected=check.shift.p0,
            shift_sampling=monitor.shift_sampling,
            refit_wanted=monitor.refit_wanted,
        )
        return out

    def _mean_cost(self, task: str, totals: dict[str, Any]) -> float | None:
        if totals["priced"]:
            return float(totals["cost_usd"]) / float(totals["priced"])
        return self.state.ledger.mean_teacher_cost(task)

    def _savings(self, task: str, totals: dict[str, Any]) -> dict[str, Any]:
        """In the range: handled requests that were not audited (no teacher call), times the
        teacher's mean cost; since this worker started: its own counters."""
        avoided = max(0, totals["handled"] - totals["audits"])
        mean = self._mean_cost(task, totals)
        registry, labels = self.state.metrics.registry, {"task": task}
        avoided_total = registry.get_sample_value("tracer_teacher_calls_avoided_total", labels)
        saved_total = registry.get_sample_value("tracer_cost_saved_usd_total", labels)
        return {
            "teacher_calls_avoided": avoided,
            "cost_saved_usd": avoided * mean if mean is not None else None,
            "mean_teacher_cost_usd": mean,
            "teacher_calls": totals["traces"],
            "teacher_cost_usd": totals["cost_usd"],
            "since_start": {  # a counter not touched yet has no sample: nothing avoided
                "teacher_calls_avoided": avoided_total or 0.0,
                "cost_saved_usd": saved_total or 0.0,
            },
        }

    def _shadow(self, config: TaskConfig, totals: dict[str, Any]) -> dict[str, Any] | None:
        """Shadow mode's would-be figures; None when no request in the range has them."""
        if not totals["shadow"]:
            return None
        would, judged, agreed = (
            totals["shadow_handled"],
            totals["shadow_judged"],
            totals["shadow_agreed"],
        )
        mean = self._mean_cost(config.name, totals)
        delta = 1.0 - config.confidence
        return {
            "requests": totals["shadow"],
            "would_handle": would,
            "coverage": ratio(would, totals["shadow"]),
            "judged": judged,
            "agreed": agreed,
            "agreement": ratio(agreed, judged),
            "agreement_lower": float(cp_lower(agreed, judged, delta)) if judged else None,
            "teacher_calls_avoidable": would,
            "cost_savable_usd": would * mean if mean is not None else None,
        }


def _request(row: dict[str, Any], chars: int) -> dict[str, Any]:
    return {
        "id": row["id"],
        "t": queries.epoch(row["created_at"]),
        "decision": row["decision"],
        "label": _trim(row["label"], 120),
        "ood": row["ood"],
        "cluster": row["cluster"],
        "version": row["model_version"],
        "reason": _trim(row["reason"], 240),
        "input": _trim(row["input"], chars),
    }


def _refit(row: dict[str, Any]) -> dict[str, Any]:
    keep = ("id", "version", "outcome", "attempt", "delta", "n_traces", "seconds")
    return {
        **{k: row.get(k) for k in keep},
        "reason": _trim(row.get("reason"), 600),
        "t": queries.epoch(row.get("created_at")),
    }
