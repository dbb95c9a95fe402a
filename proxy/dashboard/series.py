"""Per-minute counts of one task's requests, audits and teacher answers, kept in memory.

The dashboard reads each row of the store once: a refresh adds the minutes that new
rows fell in (`proxy.store.dashboard` counts them in the database), and a range (the
last hour, day or week) is summed from these minutes into the buckets its charts show.
A week of minutes is about ten thousand small lists per task; older ones are dropped.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

FIELDS = (
    "requests", "handled", "deferred", "teacher", "ood",
    "shadow", "shadow_handled", "shadow_judged", "shadow_agreed",
    "audits", "agreed", "traces", "priced", "cost_usd",
)  # fmt: skip
_AT = {name: i for i, name in enumerate(FIELDS)}
KEEP_MINUTES = 7 * 24 * 60 + 60
# range -> (seconds shown, seconds a bucket): 60, 96 and 168 buckets.
RANGES: dict[str, tuple[int, int]] = {
    "hour": (3600, 60),
    "day": (86400, 900),
    "week": (7 * 86400, 3600),
}


def ratio(part: float, whole: float) -> float | None:
    return part / whole if whole else None


class Series:
    """The minutes of one task, and how far into each table they have been read."""

    def __init__(self) -> None:
        self.minutes: dict[int, list[float]] = {}
        self.after: dict[str, int] = {}  # table -> last id counted
        self.history_from: float | None = None  # set when the first read was cut short

    def _add(self, minute: int, field: str, n: float) -> None:
        counts = self.minutes.get(minute)
        if counts is None:
            counts = self.minutes[minute] = [0.0] * len(FIELDS)
        counts[_AT[field]] += n

    def add_decisions(
        self, rows: Iterable[tuple[int, str, bool | None, str | None, bool | None, int]]
    ) -> None:
        """(minute, decision, ood, shadow, shadow_agrees, count) rows."""
        for minute, decision, ood, shadow, agrees, n in rows:
            self._add(minute, "requests", n)
            if decision in ("handled", "deferred", "teacher"):
                self._add(minute, decision, n)
            if ood:
                self._add(minute, "ood", n)
            if shadow is not None:
                self._add(minute, "shadow", n)
                if shadow == "handled":
                    self._add(minute, "shadow_handled", n)
                    if agrees is not None:
                        self._add(minute, "shadow_judged", n)
                        self._add(minute, "shadow_agreed", n if agrees else 0)

    def add_audits(self, rows: Iterable[tuple[int, bool, int]]) -> None:
        """(minute, agrees, count) rows of audited served answers."""
        for minute, agrees, n in rows:
            self._add(minute, "audits", n)
            if agrees:
                self._add(minute, "agreed", n)

    def add_traces(self, rows: Iterable[tuple[int, int, int, float]]) -> None:
        """(minute, teacher answers, priced ones, their cost) rows."""
        for minute, n, priced, cost in rows:
            self._add(minute, "traces", n)
            self._add(minute, "priced", priced)
            self._add(minute, "cost_usd", cost)

    def prune(self, now: float) -> None:
        oldest = int(now // 60) - KEEP_MINUTES
        for minute in [m for m in self.minutes if m < oldest]:
            del self.minutes[minute]

    def window(self, name: str, now: float) -> dict[str, Any]:
        """The range's buckets (oldest first) and its totals."""
        span, step = RANGES[name]
        end = (int(now) // step + 1) * step  # the end of the bucket `now` is in
        start = end - span
        sums = [[0.0] * len(FIELDS) for _ in range(span // step)]
        for minute, counts in self.minutes.items():
            t = minute * 60
            if start <= t < end:
                row = sums[(t - start) // step]
                for i, value in enumerate(counts):
                    row[i] += value
        total = [sum(column) for column in zip(*sums, strict=True)]
        return {
            "start": start,
            "end": end,
            "bucket_seconds": step,
            "buckets": [_bucket(start + i * step, row) for i, row in enumerate(sums)],
            "totals": _totals(total),
        }


def _bucket(t: int, row: list[float]) -> dict[str, Any]:
    get = dict(zip(FIELDS, row, strict=True))
    return {
        "t": t,
        **{k: int(get[k]) for k in ("requests", "handled", "deferred", "teacher", "ood")},
        **{k: int(get[k]) for k in ("audits", "agreed", "shadow", "shadow_handled")},
        **{k: int(get[k]) for k in ("shadow_judged", "shadow_agreed")},
        "coverage": ratio(get["handled"], get["requests"]),
        "agreement": ratio(get["agreed"], get["audits"]),
    }


def _totals(row: list[float]) -> dict[str, Any]:
    get = dict(zip(FIELDS, row, strict=True))
    out: dict[str, Any] = {k: int(v) for k, v in get.items() if k != "cost_usd"}
    out["cost_usd"] = get["cost_usd"]
    out["coverage"] = ratio(get["handled"], get["requests"])
    out["agreement"] = ratio(get["agreed"], get["audits"])
    out["ood_share"] = ratio(get["ood"], get["requests"])
    return out
