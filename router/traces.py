"""The trace contract: what a trace is, how it was sampled, and its JSONL form.

The proxy writes traces (teacher answers) and the trainer reads them; both import
this module, so neither depends on the other for it. A trace file holds one JSON
object a line with at least ``{"input": str, "label": str}``; the other keys are
optional.

``source`` says how a trace was sampled, because once a model serves, the teacher
mostly sees the inputs the model was unsure of:

- ``teacher``: no model served (or fallback, or a request the model cannot honour);
- ``audit``: a handled request re-asked of the teacher, drawn at the sampling rate;
- ``explore``: a deferred request drawn at the same rate;
- ``deferred``: any other request a served model deferred: its hard cases, a biased
  sample, so it trains but never calibrates or tests;
- ``import``: from existing logs (`tracer traces import`): the traffic as it was;
- ``narrowed``: a tool task's call with the tool forced by the proxy: its arguments
  teach the argument extractor, never the choice of tool.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO, cast

Source = Literal["teacher", "audit", "explore", "deferred", "import", "narrowed"]
SOURCES: tuple[Source, ...] = ("teacher", "audit", "explore", "deferred", "import", "narrowed")
TRAIN_ONLY: Source = "deferred"  # chosen by a model's confidence: train on it, never calibrate
# A tool call the proxy narrowed (the tool was forced): its arguments may teach the
# argument extractor, but it says nothing of which tool the teacher would have chosen.
ARGUMENTS_ONLY: Source = "narrowed"


class TraceFormatError(ValueError):
    """A trace file line is not a valid trace; the message names the line."""


@dataclass(frozen=True, slots=True)
class Trace:
    """One labelled pair; `raw_output` is the teacher's answer as it wrote it."""

    input: str
    label: str
    source: Source = "teacher"
    raw_output: str | None = None

    @property
    def representative(self) -> bool:
        """Sampled from the traffic independently of any model's decision."""
        return self.source not in (TRAIN_ONLY, ARGUMENTS_ONLY)

    def to_json(self, **extra: Any) -> str:
        """One JSONL line: input and label, then source and raw_output when they say
        something, then any `extra` keys (id, task, created_at, ...)."""
        row: dict[str, Any] = {"input": self.input, "label": self.label}
        if self.source != "teacher":
            row["source"] = self.source
        if self.raw_output is not None and self.raw_output != self.label:
            row["raw_output"] = self.raw_output
        row.update(extra)
        return json.dumps(row, ensure_ascii=False)


def parse_trace_line(line: str, lineno: int, source_name: str = "<traces>") -> Trace | None:
    """One JSONL line -> Trace; blank lines give None."""
    if not line.strip():
        return None
    try:
        obj = json.loads(line)
    except ValueError as exc:
        raise TraceFormatError(f"{source_name}:{lineno}: invalid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise TraceFormatError(f"{source_name}:{lineno}: expected a JSON object")
    for key in ("input", "label"):
        if key not in obj:
            raise TraceFormatError(f"{source_name}:{lineno}: missing key {key!r}")
        if not isinstance(obj[key], str):
            raise TraceFormatError(
                f"{source_name}:{lineno}: {key!r} must be a string, got {type(obj[key]).__name__}"
            )
    source = obj.get("source") or "teacher"
    if source not in SOURCES:
        raise TraceFormatError(
            f"{source_name}:{lineno}: 'source' must be one of {', '.join(SOURCES)}"
        )
    raw = obj.get("raw_output")
    if raw is not None and not isinstance(raw, str):
        raise TraceFormatError(f"{source_name}:{lineno}: 'raw_output' must be a string")
    return Trace(obj["input"], obj["label"], cast(Source, source), raw)


def iter_trace_lines(lines: Iterable[str], source_name: str = "<traces>") -> Iterator[Trace]:
    for lineno, line in enumerate(lines, start=1):
        trace = parse_trace_line(line, lineno, source_name)
        if trace is not None:
            yield trace


def read_traces(path: str | Path) -> list[Trace]:
    """Read a JSONL trace file; TraceFormatError names file and line."""
    path = Path(path)
    with path.open(encoding="utf-8") as fh:
        return list(iter_trace_lines(fh, str(path)))


def write_traces(path: str | Path | TextIO, traces: Iterable[Trace | tuple[str, str]]) -> int:
    """Write traces (or (input, label) pairs) as JSONL; the number written."""
    if isinstance(path, str | Path):
        with Path(path).open("w", encoding="utf-8") as fh:
            return write_traces(fh, traces)
    n = 0
    for item in traces:
        trace = item if isinstance(item, Trace) else Trace(item[0], item[1])
        path.write(trace.to_json() + "\n")
        n += 1
    return n
