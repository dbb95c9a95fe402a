"""The tool-task stage of a fit: whole calls certified on whole-call agreement.

The name classifier is the ordinary surrogate, certified on name agreement. This
stage learns how each tool's arguments are made (`training.tool_args`) and certifies a
second threshold on the whole-call score (the accept score times the extractor's
confidence): among the inputs whose name is handled, those above it are answered with
the whole call, and their calls (name and arguments, as parsed JSON) agree with the
teacher's at alpha.

**Two budgets.** A task's delta is split in two halves, one for names and one for
whole calls, each spent over the task's life as `proxy.refit` spends delta: the k-th
fit that tests names at (delta / 2) 6 / (pi^2 k^2), the j-th fit that tests whole calls
at (delta / 2) 6 / (pi^2 j^2) (`FitOptions.whole_delta_share`). Each series sums to
delta / 2, so by a union bound every certificate of every version holds together with
probability 1 - delta. A fit tests whole calls only when validation, scored by a name
model and an extractor fitted without it, foretells that calibration is likelier than
not to certify; that choice depends on the fit and validation splits only, so the
test keeps its level, and the fits of a young task, whose arguments cannot be
certified yet, leave the whole-call budget to the first fit that can.

A `message` (a reply that calls no tool) is answered locally only when the teacher's
text for it is constant: one canonical text in at least `CONSTANT_SHARE` of them.

Where the whole-call sequence starts matters: the fixed-sequence test stops at its
first failure, and among the few most confident calls one slip of the teacher ends it.
So the start is chosen on the validation split, with a name model and an extractor
fitted without that split (an honest estimate): the coverage at which calibration's
lower bound is likeliest to reach alpha, and the test runs only when that chance is at least
`FORETOLD_CHANCE`. Both depend on the fit and validation splits only, never on
calibration, so the test keeps its level.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import binom

from router.pipeline import Pipeline
from router.settings import FitOptions
from router.stats import cp_lower
from router.tools import MESSAGE, ToolCaller, user_text
from router.traces import Trace
from training.bound import batch_target, calibrate, start_count_for
from training.progress import Progress
from training.stages import Splits
from training.tool_args import ToolExample, fit_arguments

CONSTANT_SHARE = 0.99
FORETOLD_CHANCE = 0.5  # whole calls are tested when calibration is likelier to pass than not
PLAN_FILE, MODEL_FILE = "tool_args.json", "tool_args.onnx"


def answer_of(trace: Trace) -> dict[str, Any]:
    """A tool task's raw output: {"tool_calls": [{"name", "arguments"}]} or {"content"}."""
    try:
        value = json.loads(trace.raw_output or "")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def single_call(trace: Trace) -> tuple[str, dict[str, Any]] | None:
    calls = answer_of(trace).get("tool_calls") or []
    if len(calls) != 1 or not isinstance(calls[0].get("arguments"), dict):
        return None
    return str(calls[0]["name"]), calls[0]["arguments"]


def examples(traces: list[Trace]) -> list[ToolExample]:
    out = []
    for t in traces:
        call = single_call(t)
        if call is not None:
            out.append(ToolExample(user_text(t.input), call[0], call[1]))
    return out


def message_section(traces: list[Trace]) -> dict[str, Any]:
    texts = [answer_of(t).get("content") for t in traces if t.label == MESSAGE]
    texts = [x for x in texts if isinstance(x, str)]
    if not texts:
        return {"text": None, "answerable": False, "n": 0}
    text, count = Counter(texts).most_common(1)[0]
    return {"text": text, "answerable": count >= CONSTANT_SHARE * len(texts), "n": len(texts)}


def whole_correct(trace: Trace, name: str, arguments: dict[str, Any] | None) -> bool:
    """Would the whole call answered locally be the teacher's call?"""
    if name == MESSAGE:
        return trace.label == MESSAGE
    call = single_call(trace)
    return call is not None and call == (name, arguments)


def fit_tools(
    splits: Splits,
    extra: list[Trace],
    pipe: Pipeline,
    name_threshold: float,
    honest_names: tuple[list[str], np.ndarray],
    opts: FitOptions,
    tmp: Path,
    manifest: dict[str, Any],
    progress: Progress,
) -> None:
    """Learn the arguments, certify the whole-call threshold, report both on test.

    `honest_names`: the names and accept scores a name model fitted without the
    validation split gives it (the served one was refit on it, so its names there are
    too often right to foretell calibration)."""
    alpha, delta = batch_target(opts.target, opts.whole_delta, opts.horizon)
    delta /= 2  # the whole-call half of the task's delta
    calibration = splits.traces_of("calibration")
    with progress.stage("tool arguments (start of the whole-call sequence)"):
        fit_only = splits.traces_of("fit") + extra
        validation = splits.traces_of("validation")
        start, foretold = start_count_for(len(calibration), opts.min_coverage), None
        with tempfile.TemporaryDirectory() as folder:
            try:
                honest, _ = _learn(fit_only, opts.seed, Path(folder))
            except ValueError:  # no tool call in the fit split: nothing to foretell with
                honest = None
            if honest is not None:
                v_scores, v_correct = _whole_of(honest, validation, *honest_names, name_threshold)
                best, foretold = likeliest_start(
                    v_scores, v_correct, len(calibration), alpha, delta
                )
                start = max(start, best)
    with progress.stage("tool arguments"):
        caller, section = _learn(fit_only + validation, opts.seed, tmp)
    with progress.stage("certify whole calls (calibration)"):
        scores, correct = _whole(caller, pipe, calibration, name_threshold)
        start = min(start, int(np.isfinite(scores).sum()))  # counts only, never agreement
        section.update(whole_start_count=start, whole_delta=delta, whole_foretold=foretold)
        if foretold is None or foretold < FORETOLD_CHANCE:
            # Validation (independent of calibration) foretells a refusal: testing would
            # likely spend the whole-call budget for nothing, so the test is not run.
            section.update(whole_threshold=None, whole_calibration=None, whole_delta_spent=0.0)
            progress.log(f"whole calls: not tested (chance foretold on validation {foretold})")
        else:
            cal = calibrate(scores, correct, alpha, delta, start_count=start)
            section.update(
                whole_threshold=cal.threshold,
                whole_calibration=cal.as_dict(),
                whole_delta_spent=round(opts.whole_delta / 2, 12),
            )
            progress.log(f"whole calls: threshold {cal.threshold}, coverage {cal.coverage:.3f}")
    caller.whole_threshold = section["whole_threshold"]
    held = "test" if len(splits.index["test"]) else "calibration"  # a live fit keeps no test
    section["test"] = {
        **_test(caller, pipe, splits.traces_of(held), name_threshold),
        "split": held,
    }
    manifest["tools"] = section


def _learn(traces: list[Trace], seed: int, folder: Path) -> tuple[ToolCaller, dict[str, Any]]:
    """Fit the argument extractor on `traces`, write it into `folder`, load it back."""
    plan, model = fit_arguments(examples(traces), seed=seed)
    (folder / PLAN_FILE).write_text(json.dumps(plan, ensure_ascii=False), encoding="utf-8")
    (folder / MODEL_FILE).write_bytes(model.SerializeToString())
    section = {"plan": PLAN_FILE, "file": MODEL_FILE, "message": message_section(traces)}
    return ToolCaller(folder, section), section


def allowed_errors(m: np.ndarray, alpha: float, delta: float) -> np.ndarray:
    """For each count m, the most disagreements whose lower bound still reaches alpha
    (-1: none, not even with every call right)."""
    m = np.asarray(m, dtype=np.int64)
    lo, hi = np.full(m.shape, -1), m.copy()
    while (lo < hi).any():  # bisection: the bound falls as disagreements grow
        mid = (lo + hi + 1) // 2
        ok = cp_lower(m - mid, m, delta) >= alpha
        lo, hi = np.where(ok & (lo < hi), mid, lo), np.where(~ok & (lo < hi), mid - 1, hi)
    return lo


def likeliest_start(
    scores: np.ndarray, correct: np.ndarray, n_calibration: int, alpha: float, delta: float
) -> tuple[int, float | None]:
    """The calibration count at which the bound is likeliest to reach alpha, were
    calibration's calls right at each coverage as often as these (validation) ones, and
    that likelihood (None: no score to foretell with).

    The error rate among the top k is estimated as (errors + 1) / (k + 2): among the few
    most confident, none wrong on validation does not foretell none on calibration."""
    order = np.argsort(-scores, kind="stable")
    finite = int(np.isfinite(scores[order]).sum())
    if finite == 0 or n_calibration <= 0:
        return 0, None
    k = np.arange(1, finite + 1)
    errors = np.cumsum(~correct[order][:finite])
    rate = (errors + 1) / (k + 2)
    m = np.maximum(1, np.round(k / len(scores) * n_calibration)).astype(np.int64)
    allowed = allowed_errors(m, alpha, delta)
    chance = np.where(allowed >= 0, binom.cdf(allowed, m, rate), 0.0)
    best = len(chance) - 1 - int(np.argmax(chance[::-1]))  # the loosest of the likeliest
    return int(m[best]), float(chance[best])


def _names(pipe: Pipeline, traces: list[Trace]) -> tuple[list[str], np.ndarray]:
    """Each trace's name and accept score as served (-inf: out of distribution)."""
    if not traces:
        return [], np.zeros(0, dtype=np.float64)
    s = pipe.score([t.input for t in traces])
    labels = [pipe.labels[int(i)] for i in s.label_index]
    return labels, np.where(s.ood, -np.inf, s.accept_score)


def _plans(
    caller: ToolCaller, pipe: Pipeline, traces: list[Trace], name_threshold: float
) -> list[Any]:
    """For each trace: (name handled, plan or None), scored exactly as served."""
    return _plans_of(caller, traces, *_names(pipe, traces), name_threshold)


def _plans_of(
    caller: ToolCaller,
    traces: list[Trace],
    labels: list[str],
    accept: np.ndarray,
    name_threshold: float,
) -> list[Any]:
    """The same, given each trace's name and accept score (-inf: out of distribution)."""
    out = []
    for t, label, score in zip(traces, labels, accept, strict=True):
        handled = bool(np.isfinite(score)) and float(score) >= name_threshold
        plan = caller.plan(label, float(score), t.input) if handled else None
        out.append((handled, label, plan))
    return out


def _whole(
    caller: ToolCaller, pipe: Pipeline, traces: list[Trace], name_threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Whole-call scores (-inf where no whole call is possible) and their correctness."""
    return _whole_of(caller, traces, *_names(pipe, traces), name_threshold)


def _whole_of(
    caller: ToolCaller,
    traces: list[Trace],
    labels: list[str],
    accept: np.ndarray,
    name_threshold: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The same, given each trace's name and accept score (-inf: out of distribution)."""
    saved, caller.whole_threshold = caller.whole_threshold, -np.inf  # every score, for now
    scores, correct = [], []
    for t, (handled, label, plan) in zip(
        traces, _plans_of(caller, traces, labels, accept, name_threshold), strict=True
    ):
        possible = handled and plan is not None and plan.kind == "whole"
        scores.append(plan.score if possible else -np.inf)
        correct.append(possible and whole_correct(t, label, plan.arguments))
    caller.whole_threshold = saved
    return np.array(scores, dtype=np.float64), np.array(correct, dtype=bool)


def _parameters(pairs: list[tuple[Trace, Any]]) -> dict[str, dict[str, float | int]]:
    """Per parameter, over calls whose tool was right: how often the extracted value (or
    its absence) is the teacher's."""
    counts: dict[str, list[int]] = {}
    for trace, plan in pairs:
        call = single_call(trace)
        if call is None:
            continue
        theirs, ours = call[1], plan.arguments or {}
        for name in set(theirs) | set(ours):
            right, n = counts.setdefault(name, [0, 0])
            counts[name] = [right + (theirs.get(name) == ours.get(name)), n + 1]
    return {name: {"agreement": r / n, "n": n} for name, (r, n) in sorted(counts.items())}


def _test(
    caller: ToolCaller, pipe: Pipeline, traces: list[Trace], name_threshold: float
) -> dict[str, Any]:
    """Held-out figures: whole calls and narrowed names, overall and by tool."""
    rows = _plans(caller, pipe, traces, name_threshold)
    n = len(rows)
    pairs = [(t, lab, p) for t, (_, lab, p) in zip(traces, rows, strict=True) if p is not None]
    whole = [(t, lab, p) for t, lab, p in pairs if p.kind == "whole"]
    narrow = [(t, lab) for t, lab, p in pairs if p.kind == "narrow"]
    by_tool: dict[str, dict[str, Any]] = {}
    for t in traces:
        by_tool.setdefault(t.label, {"n": 0, "whole": 0, "whole_agree": 0, "narrowed": 0})["n"] += 1
    for t, lab, p in whole:
        by_tool[t.label]["whole"] += 1
        by_tool[t.label]["whole_agree"] += whole_correct(t, lab, p.arguments)
    for t, _ in narrow:
        by_tool[t.label]["narrowed"] += 1
    agree = sum(whole_correct(t, lab, p.arguments) for t, lab, p in whole)
    for tool, figures in by_tool.items():
        figures["parameters"] = _parameters(
            [
                (t, p)
                for t, lab, p in pairs
                if t.label == tool and lab == tool and p.arguments is not None
            ]
        )
    return {
        "n": n,
        "whole_coverage": len(whole) / n if n else 0.0,
        "whole_agreement": agree / len(whole) if whole else None,
        "narrowed_coverage": len(narrow) / n if n else 0.0,
        "narrowed_name_agreement": (
            sum(t.label == lab for t, lab in narrow) / len(narrow) if narrow else None
        ),
        "by_tool": by_tool,
    }
