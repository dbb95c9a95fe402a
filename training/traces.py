"""Trace files (JSONL, one {"input": str, "label": str} a line) and cleaning.

An optional ``source`` key says how the trace was collected. Traces whose source
is ``deferred`` were sent to the teacher because a served model was unsure of
them: they are a biased sample of the traffic (its hard part), so the trainer
learns from them but never calibrates or tests on them. Every other source
(``teacher``: no model served; ``audit``: a handled request re-asked;
``explore``: a deferred request drawn at the audit rate) is a uniform sample of
what the proxy saw.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from router.text import normalize_text


class TraceFormatError(ValueError):
    """A trace file line is not a valid trace; the message names the line."""


SELECTED = "deferred"  # chosen by a model's confidence: train on it, never calibrate


@dataclass(frozen=True, slots=True)
class Trace:
    input: str
    label: str
    source: str = "teacher"

    @property
    def representative(self) -> bool:
        """Sampled from the traffic independently of any model's decision."""
        return self.source != SELECTED


def parse_trace_line(line: str, lineno: int, source_name: str = "<traces>") -> Trace | None:
    """One JSONL line -> Trace; blank lines give None."""
    if not line.strip():
        return None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise TraceFormatError(f"{source_name}:{lineno}: invalid JSON: {exc.msg}") from exc
    if not isinstance(obj, dict):
        raise TraceFormatError(f"{source_name}:{lineno}: expected a JSON object")
    for key in ("input", "label"):
        if key not in obj:
            raise TraceFormatError(f"{source_name}:{lineno}: missing key {key!r}")
        if not isinstance(obj[key], str):
            raise TraceFormatError(
                f"{source_name}:{lineno}: {key!r} must be a string, got {type(obj[key]).__name__}"
            )
    source = obj.get("source", "teacher")
    if not isinstance(source, str):
        raise TraceFormatError(f"{source_name}:{lineno}: 'source' must be a string")
    return Trace(obj["input"], obj["label"], source or "teacher")


def load_traces(path: str | Path) -> list[Trace]:
    """Read a JSONL trace file; TraceFormatError names file and line."""
    path = Path(path)
    traces: list[Trace] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            trace = parse_trace_line(line, lineno, str(path))
            if trace is not None:
                traces.append(trace)
    return traces


def write_traces(path: str | Path, pairs: Iterable[tuple[str, str] | Trace]) -> None:
    with Path(path).open("w", encoding="utf-8") as fh:
        for item in pairs:
            if isinstance(item, Trace):
                row = {"input": item.input, "label": item.label}
                if item.source != "teacher":
                    row["source"] = item.source
            else:
                row = {"input": item[0], "label": item[1]}
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


@dataclass
class CleanStats:
    """What cleaning did to the raw traces (reported in the fit's summary)."""

    n_read: int = 0
    n_used: int = 0
    empty_input: int = 0
    invalid_label: int = 0
    duplicates: int = 0
    conflicting_inputs: int = 0
    conflicting_dropped: int = 0
    invalid_examples: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def clean_traces(
    traces: Sequence[Trace], labels: Sequence[str] | None = None
) -> tuple[list[Trace], CleanStats]:
    """Drop empty inputs and labels outside `labels`, merge duplicates.

    Inputs that are equal after whitespace normalisation and lowercasing are
    one input (otherwise the same text could land in two splits). When the
    teacher gave one input different labels, the most frequent label is kept
    (ties: the first seen) and the others are counted as dropped.
    """
    stats = CleanStats(n_read=len(traces))
    allowed = set(labels) if labels is not None else None
    groups: dict[str, list[Trace]] = {}
    for t in traces:
        label = t.label.strip()
        key = normalize_text(t.input)
        if not key:
            stats.empty_input += 1
            continue
        if not label or (allowed is not None and label not in allowed):
            stats.invalid_label += 1
            if len(stats.invalid_examples) < 5 and label not in stats.invalid_examples:
                stats.invalid_examples.append(label)
            continue
        groups.setdefault(key, []).append(Trace(" ".join(t.input.split()), label, t.source))
    out: list[Trace] = []
    for members in groups.values():
        counts = Counter(m.label for m in members)
        if len(counts) > 1:
            stats.conflicting_inputs += 1
        best = max(counts.items(), key=lambda kv: kv[1])[0]  # first max wins ties
        kept = counts[best]
        stats.duplicates += kept - 1
        stats.conflicting_dropped += len(members) - kept
        kept_trace = next(m for m in members if m.label == best)
        if not kept_trace.representative:  # seen once by chance is enough to be a sample
            sampled = next((m for m in members if m.representative), None)
            if sampled is not None:
                kept_trace = Trace(kept_trace.input, best, sampled.source)
        out.append(kept_trace)
    stats.n_used = len(out)
    return out, stats
