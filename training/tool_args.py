"""Learn to reproduce tool-call arguments: a source per parameter and a BIO tagger.

`fit_arguments(examples)` reads teacher calls (text, tool, arguments) and decides,
per (tool, parameter), where the value comes from (see `router.tool_args`): a
constant, a copy of the text, or spans of the text found by a linear tagger
(`training.tool_tagger`). `evaluate_arguments` measures an extractor as served.

The plan (JSON, for the manifest; `router.tool_args.parse_plan` checks it)::

    {"format": "tracer-tool-args", "version": 1, "features": FEATURE_SCHEME,
     "tags": k,                        # emission columns: 1 + 2 x most span parameters
     "lexicon": {"max_tokens": 8, "values": {"new york": ["city", ...], ...}},
     "tools": {NAME: {
        "spans": [PARAM, ...],         # tag columns: 0 = O, 2i+1 = B-PARAM_i, 2i+2 = I-
        "start": [k_t], "transitions": [[k_t] x k_t], "end": [k_t],  # k_t = 1 + 2 x spans
        "calls": n, "tagged_calls": m,  # for reports
        "params": {PARAM: {"source": "span", "rate": r, "list": bool}
                        | {"source": "constant", "value": JSON, "present": bool, "rate": r}
                        | {"source": "copy", "present": bool, "rate": r}
                        | {"source": "unreproducible", "present": bool, "rate": r}}}}}

`rate` is the share of training calls the source gets right for that parameter
(for a span: the share of its values found as whole-token spans); the served
confidence is multiplied by it (a span's only when that span is emitted).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from router.tool_args import (
    FEATURE_SCHEME,
    PLAN_FORMAT,
    PLAN_VERSION,
    ArgumentExtractor,
    tokenize,
)
from training.tool_tagger import (
    Tagged,
    emissions_onnx,
    fit_tool,
    lexicon_counts,
    lexicon_entries,
    training_features,
    transitions,
)

#: Defaults chosen on a split of SNIPS train (never on validate).
LEXICON_PRECISION = 0.5
MIN_COUNT = 2  # features seen once in training get no weight
C = 8.0
SMOOTHING = 0.5  # add-k on transition counts
PRIOR_WEIGHT = 1.0  # how much of log P(tag) to take off the emissions
TRANSITION_WEIGHT = 0.5  # then all of it halved: +0.5 exact, +3 points coverage at 0.95
LEXICON_MAX_TOKENS = 8  # longer values are not looked up
FIXED_SHARE = 0.95  # a constant or copy must hold in this share of calls
MISSING = object()


@dataclass(frozen=True)
class ToolExample:
    """One teacher call: the user's text, the tool it called, and the arguments."""

    text: str
    tool: str
    arguments: dict[str, Any]


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def find_spans(
    text: str, tokens: Sequence[tuple[int, int]], value: Any, taken: set[int]
) -> list[tuple[int, int]] | None:
    """Token ranges [first, stop) of a string (or of a list of strings, in order) that
    occur in `text` as whole tokens not yet `taken`; None when any is missing."""
    parts = value if isinstance(value, list) else [value]
    if not parts or not all(isinstance(p, str) and p for p in parts):
        return None
    starts = {s: i for i, (s, _) in enumerate(tokens)}
    ends = {e: i + 1 for i, (_, e) in enumerate(tokens)}
    out: list[tuple[int, int]] = []
    pos = 0
    for part in parts:
        at = text.find(part, pos)
        while at >= 0:
            first, stop = starts.get(at), ends.get(at + len(part))
            if first is not None and stop is not None and taken.isdisjoint(range(first, stop)):
                out.append((first, stop))
                break
            at = text.find(part, at + 1)
        if at < 0:
            return None
        pos = at + len(part)
    return out


def tag_example(
    text: str, tokens: Sequence[tuple[int, int]], arguments: dict[str, Any], spans: Sequence[str]
) -> list[int] | None:
    """BIO tag columns of the tokens for the span parameters, or None if a value is not
    a whole-token span. Longer values claim their tokens first."""
    tags = [0] * len(tokens)
    taken: set[int] = set()
    present = [(i, arguments[p]) for i, p in enumerate(spans) if p in arguments]
    for i, value in sorted(present, key=lambda iv: -len(_key(iv[1]))):
        ranges = find_spans(text, tokens, value, taken)
        if ranges is None:
            return None
        for first, stop in ranges:
            tags[first] = 1 + 2 * i
            tags[first + 1 : stop] = [2 + 2 * i] * (stop - first - 1)
            taken.update(range(first, stop))
    return tags


def decide_source(texts: Sequence[str], values: Sequence[Any]) -> dict[str, Any]:
    """Plan entry of one parameter of one tool; `values` holds MISSING where absent.

    In order: ``constant`` if passed in FIXED_SHARE of the calls with one value in
    FIXED_SHARE of them, ``copy`` likewise for the whole text; ``span`` if most passed
    values are whole-token spans (the tagger then decides presence; `rate` is the
    share found); if passed in at least half the calls, mostly with one value (or the
    text), ``constant`` (``copy``) with `rate` the share of calls it gets right;
    otherwise ``unreproducible``, `present` (so the tool is not answered locally) if
    passed in at least half the calls, `rate` the share of calls without it.
    """
    n = len(values)
    present = [(t, v) for t, v in zip(texts, values, strict=True) if v is not MISSING]
    share = len(present) / n
    mode_key, mode_n = Counter(_key(v) for _, v in present).most_common(1)[0]
    mode = next(v for _, v in present if _key(v) == mode_key)
    copy_n = sum(v == t for t, v in present)
    found = sum(find_spans(t, tokenize(t), v, set()) is not None for t, v in present)
    fixed = {"constant": mode_n, "copy": copy_n}
    for source, hits in fixed.items():
        if share >= FIXED_SHARE and hits / n >= FIXED_SHARE:
            return _fixed(source, mode, hits / n)
    if found / len(present) > 0.5:
        is_list = all(isinstance(v, list) for _, v in present)
        return {"source": "span", "rate": found / len(present), "list": is_list}
    for source, hits in fixed.items():
        if share >= 0.5 and hits / len(present) > 0.5:
            return _fixed(source, mode, hits / n)
    return {"source": "unreproducible", "present": share >= 0.5, "rate": 1.0 - share}


def _fixed(source: str, value: Any, rate: float) -> dict[str, Any]:
    entry = {"source": source, "value": value} if source == "constant" else {"source": source}
    return {**entry, "present": True, "rate": rate}


def _tool_plan(calls: Sequence[ToolExample]) -> dict[str, Any]:
    """Sources of every parameter the teacher passed to one tool, in first-seen order."""
    names = list(dict.fromkeys(p for c in calls for p in c.arguments))
    texts = [c.text for c in calls]
    params = {p: decide_source(texts, [c.arguments.get(p, MISSING) for c in calls]) for p in names}
    return {"spans": [p for p, e in params.items() if e["source"] == "span"], "params": params}


def _tagged(examples: Sequence[ToolExample], tools: dict[str, Any]) -> list[Tagged]:
    """(text, tool, tokens, tags) of each call whose span values are whole-token spans."""
    out = []
    for ex in examples:
        spans = tools[ex.tool]["spans"]
        tokens = tokenize(ex.text)
        tags = tag_example(ex.text, tokens, ex.arguments, spans) if spans and tokens else None
        if tags is not None:
            out.append((ex.text, ex.tool, tokens, tags))
    return out


def fit_arguments(
    examples: Sequence[ToolExample],
    seed: int = 0,
    *,
    c: float = C,
    smoothing: float = SMOOTHING,
    prior_weight: float = PRIOR_WEIGHT,
    transition_weight: float = TRANSITION_WEIGHT,
    max_tokens: int = LEXICON_MAX_TOKENS,
    min_count: int = MIN_COUNT,
    precision: float = LEXICON_PRECISION,
) -> tuple[dict[str, Any], onnx.ModelProto]:
    """The plan (JSON-serialisable, for the manifest) and the emissions model."""
    if not examples:
        raise ValueError("no tool calls to learn arguments from")
    by_tool: dict[str, list[ToolExample]] = {}
    for ex in examples:
        by_tool.setdefault(ex.tool, []).append(ex)
    tools = {tool: _tool_plan(by_tool[tool]) for tool in sorted(by_tool)}
    k = 1 + 2 * max(len(spec["spans"]) for spec in tools.values())
    tagged = _tagged(examples, tools)
    entries = [lexicon_entries(item, tools[item[1]]["spans"], max_tokens) for item in tagged]
    counts = lexicon_counts(tagged, entries, max_tokens, precision)
    features = training_features(tagged, entries, counts, max_tokens)
    keys, blocks = [np.zeros(0, np.int64)], [np.zeros((0, k), np.float32)]
    for tool, spec in tools.items():
        mine = [i for i, item in enumerate(tagged) if item[1] == tool]
        spec["tagged_calls"], spec["calls"] = len(mine), len(by_tool[tool])
        seqs = [tagged[i][3] for i in mine]  # none for a tool without spans: k = 1
        n_spans = len(spec["spans"])
        spec.update(transitions(seqs, n_spans, smoothing, prior_weight, transition_weight))
        if mine:
            y = np.concatenate([np.array(tagged[i][3], np.int64) for i in mine])
            ids = np.vstack([features[i] for i in mine])
            tool_keys, weights = fit_tool(ids, y, k, c, min_count, seed)
            keys.append(tool_keys)
            blocks.append(weights)
    lexicon: dict[str, list[str]] = {}
    for key, param in sorted(counts):
        lexicon.setdefault(key, []).append(param)
    plan = {
        "format": PLAN_FORMAT,
        "version": PLAN_VERSION,
        "features": FEATURE_SCHEME,
        "tags": k,
        "tools": tools,
        "lexicon": {"max_tokens": max_tokens, "values": lexicon},
    }
    return plan, emissions_onnx(np.concatenate(keys), np.vstack(blocks))


def reproducible(plan_tool: dict[str, Any] | None, example: ToolExample) -> bool:
    """Whether the plan could give exactly this call's arguments (with a perfect tagger)."""
    if plan_tool is None:
        return False
    params, args = plan_tool["params"], example.arguments
    if any(p not in params for p in args):
        return False
    for name, entry in params.items():
        source, value = entry["source"], args.get(name, MISSING)
        if source == "span":
            continue
        if source == "unreproducible" and entry["present"]:
            return False
        if source == "unreproducible" or not entry["present"]:
            if value is not MISSING:
                return False
        elif value != (example.text if source == "copy" else entry["value"]):
            return False
    tags = tag_example(example.text, tokenize(example.text), args, plan_tool["spans"])
    return tags is not None


def agreement_by_coverage(
    confidence: Sequence[float], correct: Sequence[bool], coverages: Sequence[float]
) -> list[dict[str, float]]:
    """Agreement of the most confident share of calls, for each share in `coverages`."""
    order = np.argsort(-np.asarray(confidence, np.float64), kind="stable")
    hits = np.asarray(correct, np.float64)[order]
    ranked = np.asarray(confidence, np.float64)[order]
    out = []
    for cov in coverages:
        m = max(1, round(cov * len(hits)))
        agreement = float(hits[:m].mean())
        out.append({"coverage": m / len(hits), "agreement": agreement, "threshold": ranked[m - 1]})
    return out


def coverage_at(confidence: Sequence[float], correct: Sequence[bool], target: float) -> float:
    """Largest share of the most confident calls whose agreement is at least `target`
    (in sample: what a calibrated threshold could reach at best)."""
    order = np.argsort(-np.asarray(confidence, np.float64), kind="stable")
    hits = np.cumsum(np.asarray(correct, np.float64)[order])
    ok = np.nonzero(hits / np.arange(1, len(hits) + 1) >= target)[0]
    return float((ok[-1] + 1) / len(hits)) if len(ok) else 0.0


def _share(flags: Sequence[bool]) -> float:
    return float(np.mean(flags)) if len(flags) else 0.0


def _summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {
        "calls": len(rows),
        "exact": _share([r["correct"] for r in rows]),
        "answered": _share([r["answered"] for r in rows]),
        "reproducible": _share([r["reproducible"] for r in rows]),
    }


def _per_parameter(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Per parameter: share of calls where it is right (both absent counts as right)."""
    names = dict.fromkeys(n for r in rows for n in (*r["true"], *(r["got"] or {})))
    return {
        name: _share(
            [
                r["got"] is not None and r["got"].get(name, MISSING) == r["true"].get(name, MISSING)
                for r in rows
            ]
        )
        for name in names
    }


def evaluate_arguments(
    extractor: ArgumentExtractor, examples: Sequence[ToolExample]
) -> dict[str, Any]:
    """Exact whole-argument agreement (dict equality, i.e. parsed JSON) given the true
    tool, per tool and per parameter; `answered` is the share of calls the extractor
    answers (not None), `reproducible` the share whose arguments the plan's sources
    could give at all. `confidence` and `correct` are per call, for calibration."""
    plan_tools = extractor.plan["tools"]
    rows: list[dict[str, Any]] = []
    for ex in examples:
        got = extractor.extract(ex.tool, ex.text)
        rows.append(
            {
                "tool": ex.tool,
                "true": ex.arguments,
                "got": got.arguments if got is not None else None,
                "answered": got is not None,
                "correct": got is not None and got.arguments == ex.arguments,
                "confidence": got.confidence if got is not None else 0.0,
                "reproducible": reproducible(plan_tools.get(ex.tool), ex),
            }
        )
    by_tool: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_tool.setdefault(row["tool"], []).append(row)
    return {
        **_summary(rows),
        "per_tool": {t: _summary(r) for t, r in sorted(by_tool.items())},
        "per_parameter": {t: _per_parameter(r) for t, r in sorted(by_tool.items())},
        "confidence": [r["confidence"] for r in rows],
        "correct": [r["correct"] for r in rows],
    }
