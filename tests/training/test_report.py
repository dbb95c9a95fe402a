"""The routing report: held-out data only, escaped HTML, clusters the router also names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from proxy.sim.synthetic import make_intents
from router import Router
from router.report_html import render_html
from training.fit import FitOptions, fit
from training.report import build_report, report_command

HOSTILE = '<script>alert("x")</script> where is my card & <img src=x onerror=alert(1)>'


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[str, str]]]:
    rows = make_intents(1500, seed=11)
    rows[0] = (HOSTILE, rows[0][1])
    out = tmp_path_factory.mktemp("fit") / "model"
    result = fit(rows, out, FitOptions(target=0.9, confidence=0.9, min_coverage=0.05, quiet=True))
    assert result.deployed, result.manifest.get("refusal")
    return out, rows


def saved_splits(directory: Path) -> dict[str, set[str]]:
    splits: dict[str, set[str]] = {}
    for line in (directory / "heldout.jsonl").read_text().splitlines():
        row = json.loads(line)
        splits.setdefault(row["split"], set()).add(row["input"])
    return splits


def report_inputs(report: dict) -> set[str]:
    texts = {e["input"] for c in report["clusters"] for e in c["examples"]}
    texts |= {
        p[side]["input"] for p in report["boundary_pairs"] for side in ("handled", "deferred")
    }
    texts |= {e for card in report["disagreements"] for e in card["examples"]}
    return texts


def test_report_is_built_on_held_out_traces_only(artifact):
    out, rows = artifact
    report = json.loads((out / "report.json").read_text())
    splits = saved_splits(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert report["summary"]["n"] == manifest["splits"]["test"] == len(splits["test"])
    assert not splits["test"] & splits["calibration"]
    shown = report_inputs(report)
    assert shown and shown <= splits["test"]
    trained_on = {text for text, _ in rows} - splits["test"] - splits["calibration"]
    assert not shown & trained_on
    assert len(report["map"]["points"]) == len(splits["test"])
    assert sum(c["size"] for c in report["clusters"]) == len(splits["test"])
    # The summary is the test split's, exactly as the manifest's own test figures.
    assert report["summary"]["coverage"] == pytest.approx(manifest["test"]["coverage"])
    for c in report["clusters"]:
        lo, hi = c["coverage_ci"]
        assert lo <= c["coverage"] <= hi and c["decision"] in {"handled", "deferred", "mixed"}
    frontier = {row["alpha"]: row for row in report["frontier"]}
    assert frontier[0.8]["coverage"] >= frontier[0.99]["coverage"]


def test_router_names_the_clusters_the_report_describes(artifact):
    out, _ = artifact
    router = Router.load(out)
    manifest = router.manifest.raw
    decision = router.predict("my card has not arrived yet")
    assert decision.cluster is not None and 0 <= decision.cluster < manifest["clusters"]["k"]
    assert f"cluster {decision.cluster} ({manifest['clusters']['names'][decision.cluster]})" in (
        decision.reason
    )
    report = json.loads((out / "report.json").read_text())
    assert {c["name"] for c in report["clusters"]} <= set(manifest["clusters"]["names"])


def test_html_escapes_hostile_trace_text(artifact, tmp_path):
    out, _ = artifact
    report = json.loads((out / "report.json").read_text())
    report["disagreements"].insert(
        0,
        {"teacher": "<b>t</b>", "surrogate": "s", "count": 1, "handled": 0, "examples": [HOSTILE]},
    )
    page = render_html(report)
    assert "<script" not in page.lower() and "<img" not in page.lower()
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "&lt;b&gt;t&lt;/b&gt;" in page
    assert "http://" not in page and "https://" not in page  # nothing to fetch: works offline
    # The same through the command, on a labelled file holding the hostile input.
    data = tmp_path / "labelled.jsonl"
    data.write_text(json.dumps({"input": HOSTILE, "label": "card_arrival"}) + "\n")
    assert report_command([str(out), "--data", str(data), "--out", str(tmp_path)]) == 0
    html = (tmp_path / "report.html").read_text()
    assert "<script" not in html.lower() and "&lt;script&gt;" in html


def test_bidi_controls_in_trace_text_are_shown_not_obeyed(artifact):
    out, _ = artifact
    report = json.loads((out / "report.json").read_text())
    hostile = "refund \u202egnp.exe\u202c and \u2067isolate\u2069 \u200fmark"
    report["disagreements"].insert(
        0, {"teacher": "t\u202e", "surrogate": "s", "count": 1, "handled": 0, "examples": [hostile]}
    )
    page = render_html(report)
    for char in "\u202e\u202c\u2067\u2069\u200f":
        assert char not in page
    assert "&lt;U+202E&gt;gnp.exe&lt;U+202C&gt;" in page


def test_refusal_report_says_why(tmp_path):
    import random

    rng = random.Random(0)
    rows = [(f"text number {i} {rng.random()}", rng.choice("abcd")) for i in range(400)]
    result = fit(rows, tmp_path / "m", FitOptions(target=0.95, quiet=True))
    assert result.status == "refused"
    report = build_report(tmp_path / "m")
    assert report["status"] == "refused" and report["refusal"]["reason"]
    assert "refused" in render_html(report)


def test_a_fit_without_a_test_split_reports_on_its_calibration_split(tmp_path):
    rows = make_intents(1200, seed=5)
    out = tmp_path / "model"
    opts = FitOptions(target=0.9, confidence=0.9, min_coverage=0.05, quiet=True, test_size=0.0)
    assert fit(rows, out, opts).deployed
    report = json.loads((out / "report.json").read_text())
    calibration = saved_splits(out)["calibration"]
    assert report["summary"]["n"] == len(calibration) > 0
    assert "calibration split" in report["source"]["description"]
    assert report["clusters"] and report_inputs(report) <= calibration
