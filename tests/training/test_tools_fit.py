"""A tool task's fit: names certified, and whole calls certified on whole-call agreement."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from proxy.sim.synthetic import REPLY, make_tool_steps
from router import Router
from router.settings import FitOptions
from router.stats import cp_lower
from router.tools import MESSAGE
from router.traces import Trace
from tests.support import tool_traces
from training.fit import FitResult, fit
from training.tools import allowed_errors, likeliest_start


@pytest.fixture(scope="module")
def fitted(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[FitResult, dict[str, dict[str, object]]]:
    steps = make_tool_steps(1500, seed=4)
    options = FitOptions(kind="tools", target=0.9, confidence=0.9, min_coverage=0.05, quiet=True)
    out = tmp_path_factory.mktemp("tools") / "model"
    return fit(tool_traces(steps), out, options), make_tool_steps(1800, seed=5)


def test_whole_calls_are_certified_and_reproduced(fitted):
    result, unseen = fitted
    assert result.deployed, result.manifest.get("refusal")
    section = result.manifest["tools"]
    assert section["whole_threshold"] is not None
    assert section["message"]["answerable"] and section["message"]["text"] == REPLY
    assert section["test"]["whole_coverage"] > 0.3
    assert section["test"]["whole_agreement"] >= 0.9
    router = Router.load(result.out_dir)
    assert router.tools is not None
    whole = right = 0
    for text, answer in list(unseen.items())[1500:]:
        decision = router.predict(text)
        if not decision.handled:
            continue
        plan = router.tools.plan(decision.label, decision.accept_score, text)
        if plan.kind != "whole":
            continue
        whole += 1
        if plan.name == MESSAGE:
            right += "content" in answer
        else:
            expected = answer.get("tool_calls") or [{}]  # type: ignore[attr-defined]
            right += (plan.name, plan.arguments) == (
                expected[0].get("name"),
                expected[0].get("arguments"),
            )
    assert whole >= 60
    assert right / whole >= 0.9


def test_a_name_that_is_sure_but_arguments_that_are_not_is_narrowed(fitted):
    result, _ = fitted
    router = Router.load(result.out_dir)
    assert router.tools is not None
    plan = router.tools.plan("get_weather", 1.0, "what's the weather in Atlantis-under-the-sea")
    assert plan.name == "get_weather" and plan.kind in ("narrow", "whole")
    plan = router.tools.plan("get_weather+set_alarm", 1.0, "weather and an alarm")
    assert plan.kind == "defer"


def test_narrowed_traces_teach_arguments_never_names(tmp_path: Path):
    steps = make_tool_steps(900, seed=6)
    base = tool_traces(steps)
    # Narrowed calls with a label that would poison the name classifier if it learned it.
    narrowed = [
        Trace(t.input + " again", "set_alarm", "narrowed", t.raw_output) for t in base[:300]
    ]
    options = FitOptions(kind="tools", target=0.9, confidence=0.9, min_coverage=0.05, quiet=True)
    result = fit(base + narrowed, tmp_path / "m", options)
    assert result.deployed, result.manifest.get("refusal")
    assert result.manifest["data"]["n_read"] == len(base)


def test_names_and_whole_calls_spend_two_budgets(fitted):
    result, _ = fitted
    assert result.manifest["delta_spent"] == pytest.approx(0.05)  # half of delta 0.1
    section = result.manifest["tools"]
    assert section["whole_delta"] == pytest.approx(0.05)
    assert section["whole_delta_spent"] == pytest.approx(0.05)
    assert section["whole_foretold"] >= 0.5


def test_whole_calls_that_validation_foretells_refused_are_not_tested(tmp_path):
    # arguments no input holds: names are learnable, whole calls never reproducible
    steps = {
        text: {"tool_calls": [{"name": a["tool_calls"][0]["name"], "arguments": {"id": i}}]}
        for i, (text, a) in enumerate(make_tool_steps(1500, seed=4).items())
        if "tool_calls" in a
    }
    options = FitOptions(
        kind="tools", target=0.9, confidence=0.9, min_coverage=0.05, quiet=True,
        whole_delta_share=0.5,
    )  # fmt: skip
    result = fit(tool_traces(steps), tmp_path / "m", options)
    assert result.deployed, result.manifest.get("refusal")
    section = result.manifest["tools"]
    assert section["whole_delta"] == pytest.approx(0.025)
    assert section["whole_threshold"] is None and section["whole_calibration"] is None
    assert section["whole_delta_spent"] == 0.0
    assert result.manifest["delta_spent"] == pytest.approx(0.05)


def test_the_whole_call_sequence_starts_where_calibration_is_likeliest_to_certify():
    # validation: the most confident half always right, the rest right a third of the time
    scores = np.linspace(1.0, 0.0, 400)
    correct = np.array([True] * 200 + [i % 3 == 0 for i in range(200)])
    start, chance = likeliest_start(scores, correct, 1000, alpha=0.95, delta=0.05)
    assert 400 <= start <= 520  # about half of calibration: where the right ones end
    assert chance is not None and chance > 0.99
    # a few slips among the most confident: the start moves past them, the chance falls
    slips = correct.copy()
    slips[[3, 9, 15]] = False
    later, lower = likeliest_start(scores, slips, 1000, alpha=0.95, delta=0.05)
    assert later > 200 and lower is not None and lower < chance
    # where no score is finite, nothing can start or be foretold
    assert likeliest_start(np.full(5, -np.inf), np.ones(5, bool), 1000, 0.95, 0.05) == (0, None)


def test_allowed_errors_are_the_most_a_bound_at_alpha_survives():
    m = np.array([10, 59, 200, 1000])
    allowed = allowed_errors(m, alpha=0.95, delta=0.05)
    assert allowed[0] == -1 and allowed[1] == 0  # 59 of 59 is the fewest that certify
    for n, e in zip(m[2:], allowed[2:], strict=True):
        assert cp_lower(n - e, n, 0.05) >= 0.95 > cp_lower(n - e - 1, n, 0.05)
