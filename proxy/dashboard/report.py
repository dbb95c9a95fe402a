"""The served version's cluster cards, from the report its fit wrote (report.json).

The cards say, on held-out traces, what each region of the input space is and how
much of it the model handles; the dashboard adds how many of the newest live requests
fell in each region, so a region that live traffic crowds shows at a glance.
Blocking (a file read): callers run it in a worker thread.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..lane_report import with_lanes
from ..lanes import TaskLanes

EXAMPLE_CHARS = 200


@functools.lru_cache(maxsize=16)
def _load(path: str, _mtime_ns: int) -> dict[str, Any]:
    """A report, parsed once per change of the file."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def _trim(value: object) -> str:
    text = str(value)
    return text if len(text) <= EXAMPLE_CHARS else text[: EXAMPLE_CHARS - 1] + "…"


def _card(card: dict[str, Any], live: dict[int, dict[str, int]]) -> dict[str, Any]:
    keep = ("id", "name", "size", "share", "top_labels", "coverage", "coverage_ci",
            "agreement", "agreement_ci", "decision")  # fmt: skip
    examples = [
        {
            "input": _trim(e.get("input", "")),
            "label": _trim(e.get("label", "")),
            "decision": str(e.get("decision", "")),
            "score": e.get("score"),
        }
        for e in card.get("examples", [])
        if isinstance(e, dict)
    ]
    cluster = card.get("id")
    counts = live.get(cluster, {}) if isinstance(cluster, int) else {}
    return {
        **{k: card.get(k) for k in keep},
        "lanes": card.get("lanes", []),
        "deferred_to": card.get("deferred_to", "teacher"),
        "examples": examples,
        "live": {"requests": 0, "handled": 0, "ood": 0, **counts},
    }


def live_by_cluster(recent: Sequence[dict[str, Any]]) -> dict[int, dict[str, int]]:
    """Requests, handled and out-of-distribution counts of recent requests per cluster."""
    out: dict[int, dict[str, int]] = {}
    for row in recent:
        cluster = row.get("cluster")
        if not isinstance(cluster, int):
            continue
        counts = out.setdefault(cluster, {"requests": 0, "handled": 0, "ood": 0})
        counts["requests"] += 1
        counts["handled"] += row.get("decision") == "handled"
        counts["ood"] += bool(row.get("ood"))
    return out


def read_cards(
    path: Path | None, recent: Sequence[dict[str, Any]], lanes: TaskLanes | None = None
) -> dict[str, Any] | None:
    """The report's summary and cluster cards, with live counts (and the lanes' live
    certificates, `lane_report`); None without a report."""
    if path is None:
        return None
    try:
        report = _load(str(path), path.stat().st_mtime_ns)
    except (OSError, ValueError):
        return None
    if lanes is not None:
        report = with_lanes(report, lanes)
    refusal = report.get("refusal")
    if isinstance(refusal, dict):
        refusal = refusal.get("reason")
    live = live_by_cluster(recent)
    clusters = report.get("clusters")
    return {
        "version": report.get("version"),
        "status": report.get("status"),
        "summary": report.get("summary") if isinstance(report.get("summary"), dict) else {},
        "refusal": None if refusal is None else str(refusal),
        "clusters": [_card(c, live) for c in clusters if isinstance(c, dict)]
        if isinstance(clusters, list)
        else [],
    }
