"""Cleaning a task's traces before a fit: empty inputs, invalid labels, duplicates.

The trace record and its JSONL form are the contract in `router.traces`, shared with
the proxy that writes traces; they are re-exported here for the trainer's callers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from router.text import normalize_text
from router.traces import (
    TRAIN_ONLY,
    Trace,
    TraceFormatError,
    parse_trace_line,
    read_traces,
    write_traces,
)

__all__ = [
    "TRAIN_ONLY",
    "CleanStats",
    "Trace",
    "TraceFormatError",
    "clean_traces",
    "load_traces",
    "parse_trace_line",
    "write_traces",
]

load_traces = read_traces


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
        groups.setdefault(key, []).append(
            Trace(" ".join(t.input.split()), label, t.source, t.raw_output)
        )
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
                kept_trace = Trace(kept_trace.input, best, sampled.source, kept_trace.raw_output)
        out.append(kept_trace)
    stats.n_used = len(out)
    return out, stats
