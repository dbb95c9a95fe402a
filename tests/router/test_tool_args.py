"""Serving side of local tool-call arguments: tokens, features, plan checks, decoding."""

from __future__ import annotations

import copy
import itertools
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from router.errors import ArtifactError
from router.tool_args import (
    FEATURE_SCHEME,
    N_FEATURES,
    PAD_ID,
    PLAN_FORMAT,
    PLAN_VERSION,
    TEMPLATES,
    ArgumentExtractor,
    bio_mask,
    parse_plan,
    spans_of,
    token_features,
    tokenize,
    tool_salt,
    viterbi,
)
from training.tool_tagger import emissions_onnx

W0 = TEMPLATES.index(((1, 0),))  # the lowercased word itself


def words(text: str) -> list[str]:
    return [text[s:e] for s, e in tokenize(text)]


def tool_entry(spans: list[str], params: dict[str, Any], k: int | None = None) -> dict[str, Any]:
    k = 1 + 2 * len(spans) if k is None else k
    return {
        "spans": spans,
        "params": params,
        "start": [0.0] * k,
        "transitions": [[0.0] * k for _ in range(k)],
        "end": [0.0] * k,
    }


def make_plan(tools: dict[str, Any], tags: int = 3) -> dict[str, Any]:
    return {
        "format": PLAN_FORMAT,
        "version": PLAN_VERSION,
        "features": FEATURE_SCHEME,
        "tags": tags,
        "tools": tools,
        "lexicon": {"max_tokens": 4, "values": {"new york": ["city"]}},
    }


def word_model(tool: str, weights: dict[str, list[float]]) -> onnx.ModelProto:
    """Emissions that look only at the word itself (`weights`: word -> row over tags),
    plus the tool's bias feature, 1.0 on O, so that other words are O."""
    ids = [token_features(w, tokenize(w), tool_salt(tool))[0] for w in weights]
    keys = [ids[0][0]] + [int(i[W0]) for i in ids]
    k = len(next(iter(weights.values())))
    rows = [[1.0] + [0.0] * (k - 1)]
    rows += list(weights.values())
    return emissions_onnx(np.array(keys, np.int64), np.array(rows, np.float32))


WEATHER = {
    "weather": tool_entry(
        ["city"],
        {
            "city": {"source": "span", "rate": 1.0},
            "units": {"source": "constant", "value": {"system": "metric"}, "present": True},
            "query": {"source": "copy", "present": True, "rate": 0.9},
            "debug": {"source": "constant", "value": True, "present": False, "rate": 0.8},
        },
    ),
    "ping": tool_entry([], {}),
}
# B-city on "paris" / "new", I-city on "york" (columns: O, B-city, I-city)
CITY_WEIGHTS = {"paris": [0.0, 6.0, 0.0], "new": [0.0, 6.0, 0.0], "york": [0.0, 0.0, 6.0]}


@pytest.fixture(scope="module")
def extractor() -> ArgumentExtractor:
    model = word_model("weather", CITY_WEIGHTS)
    return ArgumentExtractor(make_plan(WEATHER), model.SerializeToString())


def test_tokens_keep_inner_apostrophes_and_split_possessives_and_punctuation() -> None:
    assert words("Don't wake me at 7 o'clock, Tom's café!") == [
        "Don't", "wake", "me", "at", "7", "o'clock", ",", "Tom", "'s", "café", "!",
    ]  # fmt: skip
    assert words("Baker’s Keyboard Lounge at 5:30 lo-fi") == [
        "Baker", "’s", "Keyboard", "Lounge", "at", "5", ":", "30", "lo", "-", "fi",
    ]  # fmt: skip
    text = "  tabs\tand\nnewlines  "
    assert [text[s:e] for s, e in tokenize(text)] == ["tabs", "and", "newlines"]


def test_features_are_fixed_width_deterministic_and_salted_by_tool() -> None:
    text = "Play Jazz by Miles Davis on Spotify."
    tokens = tokenize(text)
    ids = token_features(text, tokens, tool_salt("play"))
    assert ids.shape == (len(tokens), N_FEATURES) and ids.dtype == np.int64
    assert (ids >= 0).all()
    assert np.array_equal(ids, token_features(text, tokens, tool_salt("play")))
    other = token_features(text, tokens, tool_salt("search"))
    assert not np.isin(ids[ids != PAD_ID], other).any()
    # short tokens have no affix features, and without lexicon labels those slots pad
    assert (ids[len(tokens) - 1, -4:] == PAD_ID).all()
    assert token_features("", [], 1).shape == (0, N_FEATURES)


def test_a_word_feature_does_not_depend_on_context_or_case() -> None:
    a = token_features("in PARIS now", tokenize("in PARIS now"), 7)
    b = token_features("paris", tokenize("paris"), 7)
    assert a[1, W0] == b[0, W0]
    assert a[1, W0 + 1] != b[0, W0 + 1]  # the previous word differs


def test_spans_come_back_as_written(extractor: ArgumentExtractor) -> None:
    text = "Weather in NEW   York?! and paris..."
    got = extractor.extract("weather", text)
    assert got is not None
    assert got.arguments == {
        "units": {"system": "metric"},
        "query": text,
        "city": ["NEW   York", "paris"],
    }
    assert 0.0 < got.confidence <= 0.9  # the copy's rate caps it


def test_constants_are_copies_so_callers_cannot_change_the_plan(
    extractor: ArgumentExtractor,
) -> None:
    first = extractor.extract("weather", "rain in Paris")
    assert first is not None and first.arguments["city"] == "Paris"
    first.arguments["units"]["system"] = "imperial"
    again = extractor.extract("weather", "rain in Paris")
    assert again is not None and again.arguments["units"] == {"system": "metric"}


def test_absent_spans_tools_without_spans_and_unknown_tools(
    extractor: ArgumentExtractor,
) -> None:
    got = extractor.extract("weather", "will it rain")
    assert got is not None and "city" not in got.arguments
    assert extractor.extract("ping", "anything") == extractor.extract("ping", "")
    pinged = extractor.extract("ping", "")
    assert pinged is not None and pinged.arguments == {} and pinged.confidence == 1.0
    assert extractor.extract("unknown", "rain in Paris") is None
    assert extractor.extract("weather", "word " * 600) is None  # too long to tag here


def test_unreproducible_parameters_block_only_when_mostly_present() -> None:
    tools = {
        "needs": tool_entry([], {"token": {"source": "unreproducible", "present": True}}),
        "rarely": tool_entry(
            [], {"token": {"source": "unreproducible", "present": False, "rate": 0.75}}
        ),
    }
    ex = ArgumentExtractor(
        make_plan(tools, tags=1), emissions_onnx(np.zeros(0), np.zeros((0, 1))).SerializeToString()
    )
    assert ex.extract("needs", "hello") is None
    got = ex.extract("rarely", "hello")
    assert got is not None and got.arguments == {} and got.confidence == pytest.approx(0.75)


def test_a_list_parameter_gives_a_list_even_for_one_span() -> None:
    tools = copy.deepcopy(WEATHER)
    tools["weather"]["params"]["city"]["list"] = True
    ex = ArgumentExtractor(
        make_plan(tools), word_model("weather", CITY_WEIGHTS).SerializeToString()
    )
    got = ex.extract("weather", "sun in Paris")
    assert got is not None and got.arguments["city"] == ["Paris"]


def brute_force(
    emissions: np.ndarray, start: np.ndarray, trans: np.ndarray, end: np.ndarray
) -> tuple[list[int], float]:
    """Best legal path and its probability among all legal paths, by enumeration."""
    n, k = emissions.shape
    scores = {}
    for path in itertools.product(range(k), repeat=n):
        s = start[path[0]] + emissions[0, path[0]] + end[path[-1]]
        s += sum(
            trans[a, b] + emissions[t + 1, b] for t, (a, b) in enumerate(itertools.pairwise(path))
        )
        if np.isfinite(s):
            scores[path] = s
    best = max(scores, key=scores.__getitem__)
    log_z = np.logaddexp.reduce(np.array(list(scores.values())))
    return list(best), float(np.exp(scores[best] - log_z))


def test_viterbi_keeps_bio_constraints_and_its_probability_is_exact() -> None:
    rng = np.random.default_rng(0)
    k = 5
    entry = tool_entry(["a", "b"], {"a": {"source": "span"}, "b": {"source": "span"}})
    entry["start"] = rng.normal(size=k).tolist()
    entry["transitions"] = rng.normal(size=(k, k)).tolist()
    entry["end"] = rng.normal(size=k).tolist()
    _, tools = parse_plan(make_plan({"t": entry}, tags=k))
    tool = tools["t"]
    for _ in range(20):
        emissions = rng.normal(scale=3.0, size=(5, k))
        emissions[0, 2] = emissions[1, 4] = 50.0  # I-a first, I-b after I-a: both illegal
        path, prob = viterbi(emissions, tool)
        want, want_prob = brute_force(emissions, tool.start, tool.trans, tool.end)
        assert path == want and prob == pytest.approx(want_prob, rel=1e-9)
        assert path[0] % 2 == 1 or path[0] == 0  # never starts inside a span
        for prev, tag in itertools.pairwise(path):
            assert tag == 0 or tag % 2 == 1 or prev in (tag - 1, tag)


def test_bio_mask_and_spans_of() -> None:
    start, trans = bio_mask(1)
    assert start.tolist() == [True, True, False]
    assert trans.tolist() == [[True, True, False], [True, True, True], [True, True, True]]
    assert spans_of([0, 1, 2, 2, 0, 3, 1, 1, 2]) == [(0, 1, 4), (1, 5, 6), (0, 6, 7), (0, 7, 9)]


def test_onnx_emissions_equal_the_numpy_reference(extractor: ArgumentExtractor) -> None:
    model = word_model("weather", CITY_WEIGHTS)
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    attrs = {a.name: a for a in model.graph.node[0].attribute}
    rows = dict(zip(attrs["keys_int64s"].ints, attrs["values_int64s"].ints, strict=True))
    text = "New York or Paris, not york"
    ids = extractor.features("weather", text, tokenize(text))
    ref = init["W"][np.vectorize(lambda i: rows.get(i, 0))(ids)].sum(axis=1)
    assert np.allclose(extractor.emissions("weather", text), ref, atol=1e-6)
    assert ref[0].tolist() == [1.0, 6.0, 0.0] and ref[1].tolist() == [1.0, 0.0, 6.0]
    assert ref[2].tolist() == [1.0, 0.0, 0.0]


BAD_PLANS = {
    "not an object": lambda p: ["plan"],
    "wrong format": lambda p: {**p, "format": "other"},
    "other feature scheme": lambda p: {**p, "features": "bio-hash-0:1"},
    "tags not an integer": lambda p: {**p, "tags": "3"},
    "tools not an object": lambda p: {**p, "tools": []},
    "unknown source": lambda p: _param(p, "city", {"source": "guess"}),
    "constant without value": lambda p: _param(p, "units", {"source": "constant", "present": True}),
    "rate above one": lambda p: _param(p, "query", {"source": "copy", "present": True, "rate": 2}),
    "present not a boolean": lambda p: _param(p, "query", {"source": "copy", "present": "yes"}),
    "span not listed": lambda p: _tool(p, "spans", []),
    "listed span not a span": lambda p: _tool(p, "spans", ["city", "units"]),
    "transitions of the wrong shape": lambda p: _tool(p, "transitions", [[0.0, 0.0]]),
    "non-finite start": lambda p: _tool(p, "start", [0.0, float("nan"), 0.0]),
    "missing end": lambda p: _tool(p, "end", None),
    "too many spans for the tags": lambda p: {**p, "tags": 1},
    "lexicon values not lists": lambda p: {**p, "lexicon": {"max_tokens": 2, "values": {"a": "b"}}},
    "lexicon without max_tokens": lambda p: {**p, "lexicon": {"values": {}}},
}


def _tool(plan: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    plan = copy.deepcopy(plan)
    plan["tools"]["weather"][key] = value
    return plan


def _param(plan: dict[str, Any], name: str, entry: dict[str, Any]) -> dict[str, Any]:
    plan = copy.deepcopy(plan)
    plan["tools"]["weather"]["params"][name] = entry
    return plan


@pytest.mark.parametrize("case", sorted(BAD_PLANS))
def test_a_malformed_plan_is_an_artifact_error(case: str) -> None:
    plan = BAD_PLANS[case](make_plan(WEATHER))
    model = word_model("weather", CITY_WEIGHTS).SerializeToString()
    with pytest.raises(ArtifactError, match="malformed tool-argument plan"):
        ArgumentExtractor(plan, model)


def test_a_model_that_does_not_fit_the_plan_is_an_artifact_error() -> None:
    with pytest.raises(ArtifactError, match="tags"):
        ArgumentExtractor(
            make_plan(WEATHER), word_model("weather", {"x": [0.0] * 5}).SerializeToString()
        )
    with pytest.raises(ArtifactError, match="cannot run"):
        ArgumentExtractor(make_plan(WEATHER), b"not an onnx model")
