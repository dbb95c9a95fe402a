"""A tool candidate is judged on whole calls: what it answers itself, checked as calls."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from proxy.promotion import compare
from proxy.sim.synthetic import make_tool_steps
from router import Router
from router.settings import FitOptions
from tests.support import tool_traces
from training.fit import fit


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    options = FitOptions(kind="tools", target=0.9, confidence=0.9, min_coverage=0.05, quiet=True)
    out = tmp_path_factory.mktemp("tools") / "model"
    result = fit(tool_traces(make_tool_steps(1500, seed=4)), out, options)
    assert result.deployed, result.manifest.get("refusal")
    return out


def fresh_rows(wrong_arguments: bool = False) -> list[tuple[int, str, str | None, str | None]]:
    """Unseen traces as the store gives them; optionally with every argument changed."""
    rows = []
    for i, t in enumerate(tool_traces(make_tool_steps(1900, seed=5))[1500:]):
        raw = json.loads(t.raw_output or "{}")
        for call in raw.get("tool_calls") or []:
            if wrong_arguments:
                call["arguments"] = {k: f"not {v}" for k, v in call["arguments"].items()}
        rows.append((i, t.input, t.label, json.dumps(raw, sort_keys=True)))
    return rows


def test_a_candidate_with_whole_calls_beats_a_version_that_only_narrows(fitted: Path):
    candidate, served = Router.load(fitted), Router.load(fitted)
    assert candidate.tools is not None and served.tools is not None
    served.tools.whole_threshold = None  # it certified names only: it narrows, never answers
    c = compare(candidate, served, fresh_rows(), 0.9, 0.1, "text", tools=True)
    assert c.served_handled == 0 and c.candidate_handled > 100
    assert (
        c.candidate_better >= c.candidate_handled * 0.9
        and c.served_better <= c.candidate_handled * 0.1
    )
    assert c.candidate_agreement is not None and c.candidate_agreement >= 0.9
    assert not c.rejected and not c.served_clearly_better
    # the other way round, the version that answers whole calls is clearly better
    assert compare(
        served, candidate, fresh_rows(), 0.9, 0.1, "text", tools=True
    ).served_clearly_better


def test_a_candidate_whose_whole_calls_are_not_the_teachers_is_rejected(fitted: Path):
    candidate, served = Router.load(fitted), Router.load(fitted)
    c = compare(candidate, served, fresh_rows(wrong_arguments=True), 0.9, 0.1, "text", tools=True)
    assert c.candidate_handled > 100 and c.rejected
    assert c.candidate_agreement is not None and c.candidate_agreement < 0.5
