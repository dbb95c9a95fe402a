"""Serve a tool call's arguments locally: constants, copies of the input, tagged spans.

Training (`training.tool_args`) decides per (tool, parameter) where the teacher's value
comes from and writes a JSON plan: ``constant``, ``copy`` (the whole user text), ``span``
(a span, or a list of spans when the slot repeats, found by a linear BIO tagger) or
``unreproducible`` (a tool that needs it in most calls is not answered: None).

The tagger's emissions are an ONNX graph over hashed token features. The tool's name
salts every hash, so each tool has its own weights and the emission columns are relative
to the tool: 0 is O, then B and I of each span parameter in plan order. Decoding is
Viterbi in numpy under BIO constraints with the plan's transitions. Nothing here checks
checksums or loads pickles: the caller verifies the artifact's files first.
"""

from __future__ import annotations

import copy
import math
import re
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from router.errors import ArtifactError

PLAN_FORMAT, PLAN_VERSION = "tracer-tool-args", 1
#: Names of the emissions graph's input and output.
FEATURES_INPUT, EMISSIONS_OUTPUT = "features", "emissions"
SOURCES = ("constant", "copy", "span", "unreproducible")
PAD_ID = 0  # feature id whose weight row is zero: an absent feature
MAX_TOKENS = 512  # longer inputs go to the teacher: Viterbi costs ~10 us a token here

# Words keep inner apostrophes ("o'clock", "don't") but a possessive "'s" is its own
# token, so "Tom's" yields the span "Tom"; any other non-space character stands alone.
_TOKEN = re.compile(r"\w+(?:['’](?!s\b)\w+)*|['’]s\b|[^\w\s]")
_RUNS = re.compile(r"(.)\1+")

# Token attributes, hashed once per token; the templates combine them at offsets.
_ZERO, _WORD, _SHAPE, _PRE3, _SUF3, _SUF2, _ONE, _N_ATTRS = range(8)
#: Feature templates: up to two (attribute, offset) parts each. One weight row per
#: hashed (tool, template, values); the "one" template is the tool's own bias.
TEMPLATES: tuple[tuple[tuple[int, int], ...], ...] = (
    ((_ONE, 0),), ((_WORD, 0),), ((_WORD, -1),), ((_WORD, 1),), ((_WORD, -2),), ((_WORD, 2),),
    ((_WORD, -1), (_WORD, 0)), ((_WORD, 0), (_WORD, 1)), ((_WORD, -1), (_WORD, 1)),
    ((_WORD, -2), (_WORD, -1)), ((_WORD, 1), (_WORD, 2)),
    ((_SHAPE, 0),), ((_SHAPE, -1), (_SHAPE, 0)), ((_SHAPE, 0), (_SHAPE, 1)),
    ((_PRE3, 0),), ((_SUF3, 0),), ((_SUF2, 0),), ((_SHAPE, 0), (_WORD, -1)),
)  # fmt: skip
#: Lexicon slots per token: "B:param" / "I:param" for each n-gram of the text that
#: the training calls passed as a value of "param" (any tool), longest matches first.
LEXICON_SLOTS = 4
N_FEATURES = len(TEMPLATES) + LEXICON_SLOTS
#: Changes whenever tokenisation or features change: a plan built for another
#: scheme would be served with silently wrong features.
FEATURE_SCHEME = f"bio-hash-1:{N_FEATURES}"

_M1, _M2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F)
_FMIX, _S33 = (np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53)), np.uint64(33)
_EDGE = 1 << 40  # sentinel attribute hashes sit above the 33-bit token hashes


def tokenize(text: str) -> list[tuple[int, int]]:
    """Character offsets (start, end) of the tokens of `text`; spaces are never inside."""
    return [m.span() for m in _TOKEN.finditer(text)]


def _shape(word: str) -> str:
    """ "Xxxx" -> "Xx", "5:30" is three tokens, "2016" -> "d": case and digit pattern."""
    kinds = (
        "X" if c.isupper() else "x" if c.islower() else "d" if c.isdigit() else c for c in word
    )
    return _RUNS.sub(r"\1", "".join(kinds))


@lru_cache(maxsize=1 << 14)
def _h(kind: str, value: str) -> int:
    """Stable 33-bit hash, never 0 (0 marks an absent attribute)."""
    return zlib.crc32(f"{kind}\x1f{value}".encode("utf-8", "surrogatepass")) | (1 << 32)


@lru_cache(maxsize=1 << 16)
def _word_attrs(word: str) -> tuple[int, ...]:
    """Hashed attributes of one token, in attribute order (cached: words repeat)."""
    low, long = word.lower(), len(word) > 3
    pre3, suf3 = (_h("p3", low[:3]), _h("s3", low[-3:])) if long else (0, 0)
    suf2 = _h("s2", low[-2:]) if len(low) > 2 else 0
    return (0, _h("w", low), _h("s", _shape(word)), pre3, suf3, suf2, 1)


# [F, 2 parts, (attribute, offset)]; a missing second part reads the all-zero attribute
_PARTS = np.array([list(t) + [(_ZERO, 0)] * (2 - len(t)) for t in TEMPLATES], np.intp)
_KA, _OA, _KB, _OB = _PARTS[:, 0, 0], _PARTS[:, 0, 1], _PARTS[:, 1, 0], _PARTS[:, 1, 1]


def tool_salt(tool: str) -> int:
    """Per-tool hash seed: each tool's features land on their own weight rows."""
    return zlib.crc32(tool.encode("utf-8", "surrogatepass"))


def _mix(x: np.ndarray) -> np.ndarray:
    """murmur3's 64-bit finaliser, on arrays (wrapping, so no overflow warnings)."""
    for factor in _FMIX:
        x = (x ^ (x >> _S33)) * factor
    out: np.ndarray = x ^ (x >> _S33)
    return out


def lexicon_labels(
    words: Sequence[str], lookup: Callable[[str], Sequence[str]], max_tokens: int
) -> list[list[str]]:
    """Per token, up to LEXICON_SLOTS labels "B:p" / "I:p" of the runs of at most
    `max_tokens` tokens whose key (the tokens lowercased, joined by one space) `lookup`
    knows as a value of parameter p; longer runs first."""
    found: list[list[tuple[int, str]]] = [[] for _ in words]
    low = [w.lower() for w in words]
    for i in range(len(low)):
        for j in range(i, min(len(low), i + max_tokens)):
            key = " ".join(low[i : j + 1])
            for param in lookup(key):
                found[i].append((j - i, f"B:{param}"))
                for t in range(i + 1, j + 1):
                    found[t].append((j - i, f"I:{param}"))
    ranked = (sorted(hits, key=lambda h: -h[0]) for hits in found)
    return [list(dict.fromkeys(label for _, label in hits))[:LEXICON_SLOTS] for hits in ranked]


def token_features(
    text: str,
    tokens: Sequence[tuple[int, int]],
    salt: int,
    labels: Sequence[Sequence[str]] | None = None,
) -> np.ndarray:
    """Feature ids [T, N_FEATURES] (positive 63-bit hashes, PAD_ID when absent), shared
    by training and serving. `labels`: the tokens' `lexicon_labels`. The emissions graph
    maps ids to weight rows; an id unseen in training reads zeros."""
    n = len(tokens)
    attrs = np.zeros((_N_ATTRS, n + 4), np.uint64)
    if n:
        attrs[:, 2 : n + 2] = np.array([_word_attrs(text[s:e]) for s, e in tokens], np.uint64).T
    for col, edge in ((0, 1), (1, 2), (n + 2, 3), (n + 3, 4)):  # -2, -1, +1, +2 beyond the ends
        attrs[1:, col] = _EDGE + edge
    pos = np.arange(n, dtype=np.intp)[:, None] + 2
    lex = np.zeros((n, LEXICON_SLOTS), np.uint64)
    for t, token_labels in enumerate(labels or ()):
        lex[t, : len(token_labels)] = [_h("lex", x) for x in token_labels[:LEXICON_SLOTS]]
    a = np.hstack([attrs[_KA[None, :], pos + _OA[None, :]], lex])
    b = np.hstack([attrs[_KB[None, :], pos + _OB[None, :]], np.zeros_like(lex)])
    seeds = (np.arange(1, N_FEATURES + 1, dtype=np.uint64) << np.uint64(36)) ^ np.uint64(salt)
    x = _mix(a * _M1 + b * _M2 + seeds[None, :] * _M2)
    ids = (x >> np.uint64(1)).astype(np.int64)
    ids[ids == PAD_ID] = 1
    ids[a == 0] = PAD_ID
    return ids


@dataclass(frozen=True)
class Extraction:
    """A tool call's arguments and a confidence in [0, 1] that they are exactly right."""

    arguments: dict[str, Any]
    confidence: float


_COPY = object()  # stands for the user's text among a tool's fixed arguments


@dataclass(frozen=True)
class _Tool:
    """One tool's part of the plan, checked and ready to decode."""

    salt: int
    fixed: dict[str, Any]  # constants to pass, and _COPY for copies of the text
    spans: tuple[tuple[str, float, bool], ...]  # (name, rate, always a list), column order
    base: float  # confidence left by the rates of the other parameters
    blocked: bool  # an unreproducible parameter is present in most calls
    start: np.ndarray  # [k]; BIO-forbidden entries here and in trans are -inf
    trans: np.ndarray  # [k, k]
    end: np.ndarray  # [k]
    exp_trans: np.ndarray  # exp(trans), for the forward pass


def _fail(where: str, what: str) -> ArtifactError:
    return ArtifactError(f"malformed tool-argument plan: {where}: {what}")


def _count(section: Mapping[str, Any], key: str, least: int, where: str = "root") -> int:
    value = section.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise _fail(where, f"{key!r} must be an integer >= {least}, got {value!r}")
    return value


def _scores(value: Any, shape: tuple[int, ...], where: str) -> np.ndarray:
    try:
        arr = np.array(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise _fail(where, f"not a numeric array ({exc})") from exc
    if arr.shape != shape or not np.isfinite(arr).all():
        raise _fail(where, f"expected shape {shape} of finite numbers, got {arr.shape}")
    return arr


def bio_mask(n_spans: int) -> tuple[np.ndarray, np.ndarray]:
    """Allowed (start [k], transition [k, k]): I-x only after B-x or I-x, never first."""
    k = 1 + 2 * n_spans
    trans = np.ones((k, k), bool)
    start = np.ones(k, bool)
    for inside in range(2, k, 2):
        start[inside] = trans[:, inside] = False
        trans[inside - 1, inside] = trans[inside, inside] = True
    return start, trans


def _param(entry: Any, at: str) -> tuple[str, float, bool]:
    """(source, rate, present) of a parameter entry, checked."""
    if not isinstance(entry, Mapping) or entry.get("source") not in SOURCES:
        raise _fail(at, f"'source' must be one of {SOURCES}")
    rate = entry.get("rate", 1.0)
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0.0 <= rate <= 1.0:
        raise _fail(at, f"'rate' must be a number in [0, 1], got {rate!r}")
    present = entry.get("present", True)
    if not isinstance(present, bool):
        raise _fail(at, "'present' must be true or false")
    if entry["source"] == "constant" and "value" not in entry:
        raise _fail(at, "a constant needs a 'value'")
    return entry["source"], float(rate), present


def _parse_tool(name: str, spec: Any, tags: int) -> _Tool:
    where = f"tool {name!r}"
    if not isinstance(spec, Mapping) or not isinstance(spec.get("params"), Mapping):
        raise _fail(where, "needs a 'params' object")
    names = spec.get("spans", [])
    if not isinstance(names, list) or len(set(map(str, names))) != len(names):
        raise _fail(where, "'spans' must be a list of distinct parameter names")
    if 1 + 2 * len(names) > tags:
        raise _fail(where, f"{len(names)} span parameters need more than {tags} tag columns")
    fixed: dict[str, Any] = {}
    spans: dict[str, tuple[str, float, bool]] = {}
    base, blocked = 1.0, False
    for param, entry in spec["params"].items():
        source, rate, present = _param(entry, f"{where} parameter {param!r}")
        if source == "span":
            spans[param] = (param, rate, bool(entry.get("list", False)))
            continue
        base *= rate
        blocked = blocked or (source == "unreproducible" and present)
        if present and source in ("constant", "copy"):
            fixed[param] = copy.deepcopy(entry["value"]) if source == "constant" else _COPY
    if set(spans) != set(names):
        raise _fail(where, "'spans' must list exactly the span parameters")
    k = 1 + 2 * len(names)
    ok_start, ok = bio_mask(len(names))
    start = np.where(ok_start, _scores(spec.get("start"), (k,), f"{where} start"), -np.inf)
    trans = np.where(ok, _scores(spec.get("transitions"), (k, k), f"{where} transitions"), -np.inf)
    end = _scores(spec.get("end"), (k,), f"{where} end")
    ordered = tuple(spans[n] for n in names)
    return _Tool(tool_salt(name), fixed, ordered, base, blocked, start, trans, end, np.exp(trans))


def _lexicon(plan: Mapping[str, Any]) -> tuple[dict[str, tuple[str, ...]], int]:
    """Lexicon values (key -> parameters) and the longest run looked up."""
    lex = plan.get("lexicon", {"max_tokens": 0, "values": {}})
    values = lex.get("values") if isinstance(lex, Mapping) else None
    if not isinstance(values, Mapping) or not all(
        isinstance(v, list) and all(isinstance(p, str) for p in v) for v in values.values()
    ):
        raise _fail("lexicon", "'values' must map keys to lists of parameter names")
    return {str(k): tuple(v) for k, v in values.items()}, _count(lex, "max_tokens", 0, "lexicon")


def parse_plan(plan: Any) -> tuple[int, dict[str, _Tool]]:
    """(tag columns, tools) of a plan; ArtifactError when it is malformed."""
    if not isinstance(plan, Mapping):
        raise _fail("root", "the plan must be a JSON object")
    if plan.get("format") != PLAN_FORMAT or plan.get("version") != PLAN_VERSION:
        raise _fail("root", f"expected format {PLAN_FORMAT!r} version {PLAN_VERSION}")
    if plan.get("features") != FEATURE_SCHEME:
        raise _fail("root", f"feature scheme {plan.get('features')!r} is not {FEATURE_SCHEME!r}")
    tags = _count(plan, "tags", 1)
    tools = plan.get("tools")
    if not isinstance(tools, Mapping):
        raise _fail("root", "'tools' must be an object")
    return tags, {str(n): _parse_tool(str(n), s, tags) for n, s in tools.items()}


def viterbi(emissions: np.ndarray, tool: _Tool) -> tuple[list[int], float]:
    """Best tag path under BIO constraints, and its probability when emissions plus
    transitions are read as a linear-chain CRF: exp(score(best) - log Z), which falls
    as runner-up paths close in (what a calibrated threshold needs). Z comes from the
    forward pass in probability space, rescaled each token (logaddexp costs 10x more
    at 29 tags); in log space only if that underflows (emissions 700 nats apart)."""
    n, k = emissions.shape
    score = tool.start + emissions[0]
    back = np.zeros((n, k), np.intp)
    shift = emissions.max(axis=1)
    probs = np.exp(emissions - shift[:, None])
    alpha, log_z = np.exp(tool.start) * probs[0], float(shift.sum())
    for t in range(1, n):
        cand = score[:, None] + tool.trans
        back[t] = cand.argmax(axis=0)
        score = cand.max(axis=0) + emissions[t]
        total = float(alpha.sum())
        log_z += math.log(total) if total > 0 else -math.inf
        alpha = (alpha / max(total, 1e-300)) @ tool.exp_trans * probs[t]
    total = float(alpha @ np.exp(tool.end))
    log_z = log_z + math.log(total) if total > 0 and log_z > -math.inf else _log_z(emissions, tool)
    score = score + tool.end
    best = int(score.argmax())
    path = [best]
    for t in range(n - 1, 0, -1):
        path.append(int(back[t, path[-1]]))
    path.reverse()
    return path, min(1.0, math.exp(float(score[best]) - log_z))


def _log_z(emissions: np.ndarray, tool: _Tool) -> float:
    alpha = tool.start + emissions[0]
    for t in range(1, len(emissions)):
        alpha = np.logaddexp.reduce(alpha[:, None] + tool.trans, axis=0) + emissions[t]
    return float(np.logaddexp.reduce(alpha + tool.end))


def spans_of(path: Sequence[int]) -> list[tuple[int, int, int]]:
    """(span parameter index, first token, last token + 1) of each B-I* run of a path."""
    out: list[tuple[int, int, int]] = []
    for t, tag in enumerate(path):
        if tag and tag % 2 == 1:  # B-x
            out.append(((tag - 1) // 2, t, t + 1))
        elif tag and out and out[-1][0] == (tag - 2) // 2 and out[-1][2] == t:
            out[-1] = (out[-1][0], out[-1][1], t + 1)
    return out


class ArgumentExtractor:
    """A loaded plan and emissions model. Thread-safe: `extract` only reads state."""

    def __init__(self, plan: Mapping[str, Any], model: Path | bytes, *, threads: int = 1) -> None:
        self.tags, self._tools = parse_plan(plan)
        self._lexicon, self._max_tokens = _lexicon(plan)
        self.plan = plan
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        source = str(model) if isinstance(model, Path) else model
        try:
            self._session = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
            probe = self._run(np.zeros((1, N_FEATURES), np.int64))
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ArtifactError(f"cannot run the tool-argument emissions model: {exc}") from exc
        if probe.shape != (1, self.tags):
            raise ArtifactError(f"emissions model gives {probe.shape[1]} tags, plan {self.tags}")

    @property
    def tools(self) -> list[str]:
        return list(self._tools)

    def features(self, tool: str, text: str, tokens: Sequence[tuple[int, int]]) -> np.ndarray:
        """Feature ids [T, N_FEATURES] of `text` for the tool's tagger."""
        words = [text[s:e] for s, e in tokens]
        labels = lexicon_labels(words, lambda key: self._lexicon.get(key, ()), self._max_tokens)
        return token_features(text, tokens, self._tools[tool].salt, labels)

    def _run(self, ids: np.ndarray) -> np.ndarray:
        out: np.ndarray = self._session.run([EMISSIONS_OUTPUT], {FEATURES_INPUT: ids})[0]
        return out

    def emissions(self, tool: str, text: str) -> np.ndarray:
        """Emission scores [T, tags] of the tool's tagger on `text` (all columns)."""
        return self._run(self.features(tool, text, tokenize(text)))

    def extract(self, tool: str, text: str) -> Extraction | None:
        """The arguments the teacher would pass to `tool` for `text`, or None when the plan
        cannot say (unknown tool, a needed unreproducible parameter, over MAX_TOKENS)."""
        spec = self._tools.get(tool)
        tokens = tokenize(text)
        if spec is None or spec.blocked or len(tokens) > MAX_TOKENS:
            return None
        args = {p: text if v is _COPY else copy.deepcopy(v) for p, v in spec.fixed.items()}
        confidence = spec.base
        if spec.spans and tokens:
            emis = self._run(self.features(tool, text, tokens))
            path, p_path = viterbi(emis[:, : 1 + 2 * len(spec.spans)].astype(np.float64), spec)
            confidence *= p_path
            found: dict[int, list[str]] = {}
            for i, first, stop in spans_of(path):
                found.setdefault(i, []).append(text[tokens[first][0] : tokens[stop - 1][1]])
            for i, values in sorted(found.items()):
                name, rate, always_list = spec.spans[i]
                args[name] = values[0] if len(values) == 1 and not always_list else values
                confidence *= rate
        return Extraction(args, max(0.0, min(1.0, confidence)))
