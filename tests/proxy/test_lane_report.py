"""The served version's report with the lanes' live certificates on its cluster cards."""

from __future__ import annotations

from proxy.config import parse_config
from proxy.lane_report import with_lanes
from proxy.lanes import TaskLanes
from proxy.pricing import Prices
from router.report_html import render_html


def lanes_for(version: str) -> TaskLanes:
    raw = {
        "model_list": [{"model_name": "big", "litellm_params": {"model": "openai/big"}}],
        "tasks": [{"name": "t", "match": {"model": "t"}, "teacher": "big", "target": 0.9}],
    }
    task = parse_config(raw, env={}).tasks[0]
    lanes = TaskLanes(task, [("small", Prices(per_request=0.0003))])
    for i in range(300):
        lanes.add_check("small", f"a{i}", True)
        lanes.add_check("small", f"b{i}", i % 3 == 0)
    lanes.recertify(version, lambda texts: [(0 if t.startswith("a") else 1, ("x",)) for t in texts])
    return lanes


REPORT = {
    "task": "t",
    "version": "v0002",
    "clusters": [
        {"id": 0, "name": "card_arrival", "decision": "mixed", "examples": []},
        {"id": 1, "name": "refund", "decision": "deferred", "examples": []},
    ],
}


def test_cards_show_each_lane_its_interval_and_where_deferred_requests_go():
    report = with_lanes(REPORT, lanes_for("v0002"))
    first, second = report["clusters"]
    assert first["deferred_to"] == "small" and second["deferred_to"] == "teacher"
    card = first["lanes"][0]
    assert card["lane"] == "small" and card["certified"] and card["serving"]
    low, high = card["interval"]
    assert low < card["agreement"] <= high
    assert card["usd_per_1000_calls"] == 0.3
    assert not second["lanes"][0]["certified"]
    assert report["lanes"]["order"] == ["small"] and report["lanes"]["round"] == 1
    page = render_html(report)
    assert "deferred answers: each lane (live)" in page and "$0.30/1k calls; serving" in page


def test_a_report_of_another_version_is_left_as_it_is():
    assert with_lanes(REPORT, lanes_for("v0001")) is REPORT
