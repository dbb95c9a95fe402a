"""The middle lane's statistics and configuration: certification, demotion, prices."""

from __future__ import annotations

import math
import random

import pytest

from proxy.config import ConfigError, parse_config
from proxy.lane_certify import Check, _pick, certify, first_half, round_delta
from proxy.lanes import TaskLanes, lane_prices
from proxy.pricing import Prices, call_cost, prices
from router.stats import min_testable

ALPHA, DELTA = 0.9, 0.1


def config(lanes: list[str], models: list[dict] | None = None, kind: str = "classify"):
    entries = models or [
        {"model_name": "big", "litellm_params": {"model": "openai/big"}},
        {
            "model_name": "small",
            "litellm_params": {"model": "openai/small"},
            "model_info": {"input_cost_per_request": 0.0003},
        },
        {
            "model_name": "tiny",
            "litellm_params": {"model": "openai/tiny"},
            "model_info": {"input_cost_per_token": 1e-8, "output_cost_per_token": 2e-8},
        },
    ]
    task = {"name": "t", "match": {"model": "t"}, "teacher": "big", "lanes": lanes,
            "kind": kind, "target": ALPHA, "confidence": 1 - DELTA}  # fmt: skip
    return parse_config({"model_list": entries, "tasks": [task]}, env={})


def checks(lane: str, n: int, agree_share: float, seed: int = 0) -> list[Check]:
    rng = random.Random(seed)
    return [Check(lane, f"{lane} input {i}", rng.random() < agree_share) for i in range(n)]


D1 = round_delta(DELTA, 1)


def test_a_lane_is_certified_where_it_agrees_and_refused_where_it_does_not():
    good = checks("small", 300, 0.99, seed=1)
    bad = checks("small", 300, 0.75, seed=2)
    cert = certify(good + bad, [0] * 300 + [1] * 300, ["small"], ALPHA, D1, 1)
    assert cert is not None and cert.lanes == {0: ["small"]}
    _, n, lower = cert.figures[(0, "small")]
    assert n == 300 and lower is not None and lower >= ALPHA
    _, _, lower_bad = cert.figures[(1, "small")]
    assert lower_bad is not None and lower_bad < ALPHA
    assert cert.tested == 2 and cert.delta == pytest.approx(DELTA * 6 / math.pi**2)
    assert cert.groups["small"].clusters == [0] and cert.groups["small"].certified


def test_checks_outside_the_lanes_share_and_too_small_clusters_spend_nothing():
    """A check the version handles (None) is left out; a pair too small to pass even
    with no disagreement is neither tested nor counted in the Bonferroni family."""
    good = checks("small", 120, 1.0)
    tiny = checks("small", 5, 1.0, seed=3)
    handled = checks("small", 500, 0.0, seed=4)  # would sink cluster 0 if it counted
    clusters = [0] * 120 + [1] * 5 + [None] * 500
    cert = certify(good + tiny + handled, clusters, ["small"], ALPHA, D1, 1)
    assert cert is not None and cert.tested == 1
    assert cert.lanes[0] == ["small"]
    assert cert.figures[(1, "small")] == (5, 5, None)  # not tested alone (maybe in a group)
    floor = min_testable(ALPHA, D1 / 2)
    assert ALPHA**floor <= D1 / 2 < ALPHA ** (floor - 1)
    # Nothing anyone could certify: the round is not held, and spends nothing.
    assert certify(tiny, [1] * 5, ["small"], ALPHA, D1, 1) is None


def test_many_small_clusters_pass_as_a_group_that_none_passes_alone():
    """Forty clusters of 60 checks: too few for any one at delta / m, enough together.
    The group is picked on one half of the checks and tested on the other."""
    crowd, clusters = [], []
    for k in range(40):
        crowd += checks("small", 60, 1.0 if k % 2 == 0 else 0.5, seed=k)
        clusters += [k] * 60
    cert = certify(crowd, clusters, ["small"], ALPHA, D1, 1)
    assert cert is not None and cert.tested > 1
    assert all(lower is None for _, _, lower in cert.figures.values())  # none alone
    group = cert.groups["small"]
    assert group.certified and group.lower is not None and group.lower >= ALPHA
    assert set(group.clusters) <= set(range(0, 40, 2)) and len(group.clusters) >= 15
    assert set(cert.lanes) == set(group.clusters)
    halves = [first_half(c.input) for c in crowd]
    assert 0.4 < sum(halves) / len(halves) < 0.6


def test_a_group_takes_every_cluster_good_on_its_own_and_none_that_rides_on_the_others():
    """Perfect clusters first, then many at 0.92: a group of the highest bound would stop
    at the perfect ones; it takes the good ones too, but not a cluster below alpha whose
    few misses the pooled bound could absorb."""
    picking = {(k, "small"): [20, 20] for k in range(10)}  # perfect
    picking |= {(10 + k, "small"): [92, 100] for k in range(20)}  # 0.92 each: above alpha
    picking[(99, "small")] = [40, 50]  # 0.80: below alpha on its own
    picked = _pick(picking, "small", set(), ALPHA, 0.01)
    assert set(picked) == set(range(30))


def test_the_cheapest_certified_lane_serves_and_a_drifting_lane_is_demoted_there_only():
    cfg = config(["small", "tiny"])
    lanes = TaskLanes(cfg.tasks[0], lane_prices(cfg, cfg.tasks[0]))
    assert lanes.lanes == ["tiny", "small"]  # cheapest first, whatever the listed order
    for lane in ("small", "tiny"):
        for i in range(200):
            lanes.add_check(lane, f"a{i}", True)
            lanes.add_check(lane, f"b{i}", True)
    assert lanes.due("v1")
    lanes.recertify("v1", lambda texts: [(0 if t.startswith("a") else 1, ("x",)) for t in texts])
    assert lanes.certificate is not None and lanes.read == 800 and lanes.round == 1
    assert lanes.choose(0) == "tiny" and lanes.choose(1) == "tiny" and lanes.choose(None) is None
    assert not lanes.due("v1")  # the checks have not grown by half yet
    for _ in range(60):
        lanes.add_audit("tiny", 0, "a-late", False)
    assert (0, "tiny", "answers") in lanes.demoted and (1, "tiny", "answers") not in lanes.demoted
    assert lanes.choose(0) == "small"  # the next cheapest takes the cluster
    assert lanes.choose(1) == "tiny"  # and the drifting lane keeps the cluster it still serves
    cards = {(c["cluster"], c["lane"]): c for c in lanes.cards()}
    assert cards[(0, "tiny")]["demoted"] and not cards[(0, "tiny")]["serving"]
    assert cards[(0, "small")]["serving"]
    # The next round: the lane's checks in the cluster it drifted in no longer count
    # (only the audits that demoted it do); its checks elsewhere still do.
    by_prefix = lambda texts: [(0 if t.startswith("a") else 1, ("x",)) for t in texts]  # noqa: E731
    lanes.recertify("v1", by_prefix)
    assert lanes.round == 2 and not lanes.demoted
    assert lanes.choose(0) == "small" and lanes.choose(1) == "tiny"
    # A new version: new clusters; what it answered in the drifted region before still
    # does not count, whichever clusters it falls in now.
    assert lanes.due("v2")
    lanes.recertify("v2", lambda texts: [(0, ("x",))] * len(texts))
    assert lanes.round == 3 and lanes.choose(0) == "small"


@pytest.mark.parametrize("agree_share", [1.0, 0.5])
def test_an_idle_lane_gets_its_next_round_sooner(agree_share: float):
    """After a round that leaves no lane serving, the next comes at a tenth more checks,
    not half as many again: a lane refused on a new version's first round would
    otherwise sit idle for days."""
    cfg = config(["small"])
    lanes = TaskLanes(cfg.tasks[0], lane_prices(cfg, cfg.tasks[0]))
    for check in checks("small", 300, agree_share, seed=5):
        lanes.add_check(check.lane, check.input, check.agrees)
    lanes.recertify("v1", lambda texts: [(0, ("x",))] * len(texts))
    assert lanes.round == 1 and lanes.serving() == (agree_share == 1.0)
    for check in checks("small", 30, 1.0, seed=6):
        lanes.add_check(check.lane, check.input + " again", check.agrees)
    assert lanes.due("v1") == (not lanes.serving())  # 330 checks: 1.1 x 300
    for check in checks("small", 120, 1.0, seed=7):
        lanes.add_check(check.lane, check.input + " later", check.agrees)
    assert lanes.due("v1")  # 450 checks: 1.5 x 300


def test_the_shadow_share_starts_at_one_and_falls_to_its_floor():
    task = config(["small"]).tasks[0]
    lanes = TaskLanes(task, [("small", Prices(per_request=1e-4))])
    assert lanes.shadow_rate() == 1.0
    lanes.checks = checks("small", 100_000, 1.0)
    assert lanes.shadow_rate() == pytest.approx(0.05)


def test_lane_configuration_errors_are_clear():
    with pytest.raises(ConfigError, match="not a model_name"):
        config(["nowhere"])
    with pytest.raises(ConfigError, match="teacher"):
        config(["big"])
    with pytest.raises(ConfigError, match="twice"):
        config(["small", "small"])
    unpriced = config(["big2"], models=[
        {"model_name": "big", "litellm_params": {"model": "openai/big"}},
        {"model_name": "big2", "litellm_params": {"model": "openai/no-such-model"}},
    ])  # fmt: skip
    with pytest.raises(ConfigError, match="no price"):
        lane_prices(unpriced, unpriced.tasks[0])
    tools = config(["small"], kind="tools")
    with pytest.raises(ConfigError, match="narrow_to"):
        lane_prices(tools, tools.tasks[0])


def test_prices_come_from_model_info_else_litellms_map():
    cfg = config(["small"], models=[
        {"model_name": "big", "litellm_params": {"model": "openai/big"}},
        {"model_name": "small", "litellm_params": {"model": "gpt-4o-mini"}},
        {"model_name": "flat", "litellm_params": {"model": "openai/x"},
         "model_info": {"input_cost_per_request": 0.005}},
    ])  # fmt: skip
    entry = cfg.model("small")
    assert entry is not None
    known = prices(entry)
    assert known is not None and known.per_prompt_token > 0 and known.per_completion_token > 0
    flat = cfg.model("flat")
    assert flat is not None
    assert call_cost(flat, None, None) == pytest.approx(0.005)
    assert call_cost(flat, 100, 3) == pytest.approx(0.005)
    unpriced = cfg.model("big")
    assert unpriced is not None and prices(unpriced) is None and call_cost(unpriced, 10, 1) is None


def test_a_lane_that_agrees_with_the_guess_is_certified_to_confirm_where_it_cannot_answer():
    cfg = config(["small"])
    lanes = TaskLanes(cfg.tasks[0], lane_prices(cfg, cfg.tasks[0]))
    for i in range(300):  # right where it says a guess ("x" or "w"), wrong on the rest
        lanes.add_check("small", f"a{i}", i % 3 != 0, "y" if i % 3 == 0 else "xw"[i % 2])
    lanes.recertify("v1", lambda texts: [(0, ("x", "w"))] * len(texts))
    assert lanes.choose(0) is None  # 0.67 alone: refused
    assert lanes.choose(0, "confirms") == "small" and lanes.route(0) == ("small", "confirms")
    cards = {(c["cluster"], c["mode"]): c for c in lanes.cards()}
    assert cards[(0, "confirms")]["checks"] == 200 and cards[(0, "confirms")]["serving"]
    assert not cards[(0, "answers")]["certified"]
    for _ in range(60):  # it drifts where it confirms: demoted from the cluster
        lanes.add_audit("small", 0, "a-late", False, "x", "confirms")
    assert lanes.route(0) is None and (0, "small", "answers") in lanes.demoted
