"""The BIO tagger behind span arguments: features, per-tool fits, transitions, ONNX.

Split from `training.tool_args` (which decides the sources and drives the fit) to
keep both short. Each tool gets its own multinomial logistic regression over the
hashed features of `router.tool_args` (the tool's name salts them, so the tools
never share a weight row); the rows of all tools go into one table behind a
LabelEncoder in the emissions graph. Transitions are counted per tool and divided
by the tag prior (the usual hybrid of a discriminative tagger and an HMM), so
Viterbi combines P(tag | token) with P(tag | previous tag) without counting the
prior twice.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import scipy.sparse as sp
from onnx import TensorProto, helper, numpy_helper
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from router.tool_args import (
    EMISSIONS_OUTPUT,
    FEATURES_INPUT,
    N_FEATURES,
    PAD_ID,
    bio_mask,
    lexicon_labels,
    spans_of,
    token_features,
    tool_salt,
)
from training.onnx_graph import IR_VERSION, OPSET

MAX_ITER, TOL = 300, 1e-4  # tighter fits changed nothing on a split of SNIPS train
#: (text, tool, tokens, tags) of one call whose span values were all found
Tagged = tuple[str, str, list[tuple[int, int]], list[int]]
Entry = tuple[str, str]  # (lexicon key, parameter)


def lexicon_entries(item: Tagged, spans: Sequence[str], max_tokens: int) -> list[Entry]:
    """(key, parameter) of each span value of a call: its tokens lowercased, one space
    between them, as `router.tool_args.lexicon_labels` looks them up."""
    text, _, tokens, tags = item
    words = [text[s:e] for s, e in tokens]
    return [
        (" ".join(words[first:stop]).lower(), spans[i])
        for i, first, stop in spans_of(tags)
        if stop - first <= max_tokens
    ]


def lexicon_counts(
    tagged: Sequence[Tagged], entries: Sequence[list[Entry]], max_tokens: int, precision: float
) -> Counter[Entry]:
    """How often each (key, parameter) was passed, for keys that are that parameter's
    value in at least `precision` of their occurrences in the texts: "saga" is a type
    of work, "the" is mostly not a value. Without this filter noisy labels cost more
    than the lexicon gains on SNIPS."""
    counts = Counter(e for own in entries for e in own)
    keys = {key for key, _ in counts}
    seen: Counter[str] = Counter()
    for text, _, tokens, _ in tagged:
        low = [text[s:e].lower() for s, e in tokens]
        for i in range(len(low)):
            for j in range(i + 1, min(len(low), i + max_tokens) + 1):
                key = " ".join(low[i:j])
                if key in keys:
                    seen[key] += 1
    return Counter({e: n for e, n in counts.items() if n >= precision * seen[e[0]]})


def training_features(
    tagged: Sequence[Tagged],
    entries: Sequence[list[Entry]],
    counts: Counter[Entry],
    max_tokens: int,
) -> list[np.ndarray]:
    """Feature ids of each tagged call, its lexicon labels left-one-out: a value counts
    only if some other call passed it, as the values of an unseen call would."""
    known: dict[str, list[str]] = {}
    for key, param in counts:
        known.setdefault(key, []).append(param)
    out = []
    for (text, tool, tokens, _), own in zip(tagged, entries, strict=True):
        mine = Counter(own)

        def lookup(key: str, mine: Counter[Entry] = mine) -> list[str]:
            return [p for p in known.get(key, ()) if counts[key, p] > mine[key, p]]

        labels = lexicon_labels([text[s:e] for s, e in tokens], lookup, max_tokens)
        out.append(token_features(text, tokens, tool_salt(tool), labels))
    return out


def _design(ids: np.ndarray, min_count: int) -> tuple[np.ndarray, sp.csr_matrix, int]:
    """(kept feature ids, token x kept-feature count matrix, row of the bias feature)."""
    keys, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    bias_key = ids[0, 0]  # the first template is the tool's constant feature
    keep = ((counts >= min_count) | (keys == bias_key)) & (keys != PAD_ID)
    col = np.where(keep, np.cumsum(keep) - 1, -1)[inverse.reshape(ids.shape)]
    rows = np.broadcast_to(np.arange(len(ids))[:, None], ids.shape)
    used = col >= 0
    x = sp.csr_matrix(
        (np.ones(int(used.sum())), (rows[used], col[used])), shape=(len(ids), int(keep.sum()))
    )
    return keys[keep], x, int(np.searchsorted(keys[keep], bias_key))


def fit_tool(
    ids: np.ndarray, y: np.ndarray, k: int, c: float, min_count: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Feature ids kept (seen `min_count` times) and their weight rows [n, k] of one tool's
    multinomial logistic regression. The intercept goes into the row of the tool's bias
    feature, which every token has once, so the graph needs no bias of its own."""
    keys, x, bias_row = _design(ids, min_count)
    weights = np.zeros((x.shape[1], k), np.float32)
    intercept = np.full(k, -30.0)  # a tag never seen is never emitted
    classes = np.unique(y)
    if len(classes) == 1:
        intercept[classes] = 0.0
    else:
        model = LogisticRegression(C=c, max_iter=MAX_ITER, tol=TOL, random_state=seed)
        # One BLAS thread: L-BFGS's many small vector updates ran 50x slower with two
        # threads on a busy 2-core machine (spinning workers), and no faster when idle.
        with warnings.catch_warnings(), threadpool_limits(limits=1):
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(x, y)
        coef, icpt = model.coef_, model.intercept_
        if len(classes) == 2:  # one logit for two classes: split it symmetrically
            coef, icpt = np.vstack([-coef, coef]) / 2, np.array([-icpt[0], icpt[0]]) / 2
        weights[:, classes] = coef.T
        intercept[classes] = icpt
    weights[bias_row] += intercept
    return keys, weights


def transitions(
    sequences: Sequence[Sequence[int]],
    n_spans: int,
    smoothing: float,
    prior_weight: float,
    weight: float = 1.0,
) -> dict[str, Any]:
    """`weight` x the log start / transition / end probabilities of one tool, smoothed
    over BIO-allowed moves, less `prior_weight` x log P(tag) on entering each tag.
    Forbidden moves hold 0: the router masks them."""
    k = 1 + 2 * n_spans
    ok_start, ok = bio_mask(n_spans)
    start, moves, end, prior = np.zeros(k), np.zeros((k, k)), np.zeros(k), np.zeros(k)
    for tags in sequences:
        start[tags[0]] += 1
        end[tags[-1]] += 1
        np.add.at(moves, (tags[:-1], tags[1:]), 1)
        prior += np.bincount(tags, minlength=k)
    start = (start + smoothing) * ok_start
    moves = (moves + smoothing) * ok
    end = end + smoothing
    total = moves.sum(axis=1) + end
    log_prior = prior_weight * np.log((prior + smoothing) / (prior + smoothing).sum())
    with np.errstate(divide="ignore"):
        scores = {
            "start": np.log(start / start.sum()) - log_prior,
            "transitions": np.log(moves / total[:, None]) - log_prior[None, :],
            "end": np.log(end / total),
        }
    return {
        name: np.round(np.where(np.isfinite(v), weight * v, 0.0), 6).tolist()
        for name, v in scores.items()
    }


def emissions_onnx(keys: np.ndarray, weights: np.ndarray) -> onnx.ModelProto:
    """features [T, F] int64 -> emissions [T, k]: the sum of the features' weight rows.

    A LabelEncoder maps each known feature id (`keys`) to its row of `weights`; row 0
    is zeros, for PAD_ID and for ids never seen in training."""
    k = weights.shape[1]
    table = np.vstack([np.zeros((1, k), np.float32), weights.astype(np.float32)])
    encoder = helper.make_node(
        "LabelEncoder",
        [FEATURES_INPUT],
        ["rows"],
        domain="ai.onnx.ml",
        # -1 (never an id) keeps the key list non-empty when no tool has spans
        keys_int64s=[-1, *keys.astype(np.int64).tolist()],
        values_int64s=list(range(len(keys) + 1)),
        default_int64=0,
    )
    nodes = [
        encoder,
        helper.make_node("Gather", ["W", "rows"], ["weights"], axis=0),
        helper.make_node("ReduceSum", ["weights", "axis1"], [EMISSIONS_OUTPUT], keepdims=0),
    ]
    inits = [
        numpy_helper.from_array(table, "W"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
    ]
    graph = helper.make_graph(
        nodes,
        "tool_argument_emissions",
        [helper.make_tensor_value_info(FEATURES_INPUT, TensorProto.INT64, [None, N_FEATURES])],
        [helper.make_tensor_value_info(EMISSIONS_OUTPUT, TensorProto.FLOAT, [None, k])],
        inits,
    )
    opsets = [helper.make_opsetid(domain, version) for domain, version in OPSET.items()]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = IR_VERSION
    return model
