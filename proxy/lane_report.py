"""The served version's report with the lanes' live certificates on its cluster cards.

The trainer writes a version's report when its fit ends; which lane answers a
cluster's deferred requests is only known later, round by round, in the proxy. The
report page and its JSON add it here: per cluster, each lane's agreement with the
teacher (with a 95% interval) in each mode, its certificate, its cost per 1,000 calls,
and where the cluster's deferred requests go now.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from router.report_html import render_html

from .lane_certify import ANSWERS
from .lanes import TaskLanes


def with_lanes(report: dict[str, Any], lanes: TaskLanes) -> dict[str, Any]:
    """A copy of `report` with lane figures, when the lanes' round is of its version."""
    certificates = lanes.certificates
    if not certificates or report.get("version") != lanes.version:
        return report
    by_cluster: dict[int, list[dict[str, object]]] = {}
    for card in lanes.cards():
        cluster = card["cluster"]
        assert isinstance(cluster, int)
        by_cluster.setdefault(cluster, []).append(card)
    clusters = []
    for card in report.get("clusters") or []:
        cluster = card.get("id") if isinstance(card, dict) else None
        if not isinstance(cluster, int):
            clusters.append(card)
            continue
        chosen = describe(lanes.route(cluster))
        clusters.append({**card, "lanes": by_cluster.get(cluster, []), "deferred_to": chosen})
    summary = {
        "round": lanes.round,
        "delta": sum(c.delta for c in certificates.values()),  # the round's, all modes
        "pairs_tested": {mode: c.tested for mode, c in certificates.items()},
        "checks_read": lanes.read,
        "checks_so_far": len(lanes.checks),
        "order": lanes.lanes,
        "usd_per_1000_calls": {lane: lanes.per_1000(lane) for lane in lanes.lanes},
    }
    return {**report, "clusters": clusters, "lanes": summary}


def describe(chosen: tuple[str, str] | None) -> str:
    """Where a cluster's deferred requests go, in words: a lane, how, or the teacher."""
    if chosen is None:
        return "teacher"
    lane, mode = chosen
    return lane if mode == ANSWERS else f"{lane} (confirms the surrogate's guesses)"


def render_report(path: Path, lanes: TaskLanes, as_json: bool) -> bytes:
    """A report file as served: with lane figures added (blocking: a file read)."""
    report = json.loads(path.with_name("report.json").read_text(encoding="utf-8"))
    report = with_lanes(report if isinstance(report, dict) else {}, lanes)
    if as_json:
        return json.dumps(report).encode()
    return render_html(report).encode()
