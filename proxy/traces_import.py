"""`tracer traces import TASK FILE`: start a task from the logs it already has.

Each record goes through the task's own rules, as a live request would: the request is
checked (`proxy.validate`), matched (`proxy.tasks.TaskMatcher`: the first task whose
criteria hold; a record that another task claims first is not this task's), its input
extracted (`task_input`), the answer checked whole (`proxy.answers`) and read as a label
(`proxy.teacher.label_of`, `answer_key`). What passes is stored as a teacher trace with
`source: import`. A trace line's own `source` is kept when it is `deferred` or
`narrowed`: those were never a sample of the traffic, and must not calibrate.

**Imported traces may calibrate and test** (`router.traces.Trace.representative`): no
model chose which of them the teacher saw, so they are the traffic as it was, just as
the `teacher` traces of a task with no model yet. That is what lets a first fit run
before live traffic. What they cannot promise is that tomorrow's traffic looks like
the logs; the live checks own that risk: a new version's first audits are sampled at a
high rate (`tasks[].probation_boost`), and one whose audits contradict its certificate
is demoted (`proxy.monitor`).

A record is stored once: one already in the store (same task, input and raw answer), or
repeated in the file, counts as a duplicate, so importing a file twice stores nothing
new. An answer that is not a valid label is reported as invalid, with its line, and not
stored. All rows are written in one transaction: an error leaves none of them.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from router.chat import parse_label
from router.traces import ARGUMENTS_ONLY, SOURCES, TRAIN_ONLY

from . import store
from .answers import Answer, Completion
from .config import Config, TaskConfig
from .errors import UpstreamError
from .http import ClientError
from .log_formats import Format, LogRecord
from .pricing import call_cost
from .store.schema import TraceRow, now
from .tasks import TaskMatcher, task_input
from .teacher import answer_key, label_of
from .validate import validate_chat

LABEL_CHARS = 256  # traces.label is a String(256)
CHUNK = 1000  # rows an INSERT statement carries
SHOWN = 20  # invalid lines listed in the text report (all are in --json)
IMPORT_LOCK = 0x7472616365720002  # PostgreSQL advisory lock: one import at a time


@dataclass
class ImportReport:
    """What an import did, line by line: every non-blank line is exactly one of stored,
    duplicate, not matched or invalid; `matched` counts the task's records among them."""

    task: str
    file: str
    format: str
    read: int = 0
    matched: int = 0
    stored: int = 0
    repeated_in_file: int = 0
    already_stored: int = 0
    not_matched: list[tuple[int, str]] = field(default_factory=list)
    invalid: list[tuple[int, str]] = field(default_factory=list)
    dry_run: bool = False

    @property
    def duplicates(self) -> int:
        return self.repeated_in_file + self.already_stored

    @property
    def usable(self) -> bool:
        """Did the file give the task anything (stored now, or already)?"""
        return self.stored + self.duplicates > 0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["duplicates"] = self.duplicates
        out["not_matched"] = [{"line": n, "reason": r} for n, r in self.not_matched]
        out["invalid"] = [{"line": n, "reason": r} for n, r in self.invalid]
        return out

    def text(self) -> str:
        verb = "would store" if self.dry_run else "stored"
        lines = [
            f"{self.file} ({self.format}) into task {self.task}:",
            f"  read         {self.read:>8} lines",
            f"  matched      {self.matched:>8}",
            f"  {verb:<12} {self.stored:>8}   (source import)",
            f"  duplicates   {self.duplicates:>8}   ({self.repeated_in_file} repeated in the "
            f"file, {self.already_stored} already stored)",
            f"  not matched  {len(self.not_matched):>8}",
        ]
        reasons = Counter(reason for _, reason in self.not_matched)
        for reason, n in reasons.most_common(5):
            first = [str(line) for line, r in self.not_matched if r == reason][:5]
            lines.append(f"    {n} x {reason} (lines {', '.join(first)}{', ...' if n > 5 else ''})")
        lines.append(f"  invalid      {len(self.invalid):>8}")
        for line, reason in self.invalid[:SHOWN]:
            lines.append(f"    line {line}: {reason}")
        if len(self.invalid) > SHOWN:
            lines.append(f"    ... {len(self.invalid) - SHOWN} more (--json lists them all)")
        return "\n".join(lines)


@dataclass(frozen=True)
class Row:
    """A trace to store, and the digest of (input, raw answer) that makes it a duplicate."""

    digest: bytes
    values: dict[str, Any]


def digest(input_text: str, answer: str) -> bytes:
    return hashlib.blake2b(f"{input_text}\x00{answer}".encode(), digest_size=16).digest()


def _short(value: object, limit: int = 80) -> str:
    shown = repr(value)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


class Skip(Exception):
    """A record that is not stored: `invalid` (unusable) or not the task's."""

    def __init__(self, reason: str, matched: bool, invalid: bool = True) -> None:
        super().__init__(reason)
        self.reason, self.matched, self.invalid = reason, matched, invalid


def _not_matched(reason: str) -> Skip:
    return Skip(reason, matched=False, invalid=False)


def _tool_answer(raw: str) -> Answer | None:
    """A tool task's raw answer (`router.tools.call_json`) read back as an answer."""
    try:
        obj = json.loads(raw)
    except ValueError:
        return None
    calls = obj.get("tool_calls") if isinstance(obj, dict) else None
    if isinstance(calls, list) and calls:
        if not all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in calls):
            return None
        return Answer(
            None,
            [
                {
                    "id": "",
                    "type": "function",
                    "function": {
                        "name": c["name"],
                        "arguments": json.dumps(c.get("arguments") or {}),
                    },
                }
                for c in calls
            ],
        )
    content = obj.get("content") if isinstance(obj, dict) else None
    return Answer(content) if isinstance(content, str) else None


class Importer:
    """Turns records into trace rows under one task's rules, as the live path would."""

    def __init__(self, config: Config, task: TaskConfig, model: str | None = None) -> None:
        self.task = task
        self.matcher = TaskMatcher(config.tasks)
        self.entry = config.model(task.teacher)
        self.model = model  # what the requests are taken to have named (the task's alias)

    def prepare(self, records: Iterable[LogRecord], report: ImportReport) -> list[Row]:
        """The rows to store (each once), and the report of every line."""
        rows: list[Row] = []
        seen: set[bytes] = set()
        for record in records:
            report.read += 1
            try:
                row = self.row(record)
            except Skip as skip:
                report.matched += skip.matched
                target = report.invalid if skip.invalid else report.not_matched
                target.append((record.line, skip.reason))
                continue
            report.matched += 1
            if row.digest in seen:
                report.repeated_in_file += 1
                continue
            seen.add(row.digest)
            rows.append(row)
        return rows

    def row(self, record: LogRecord) -> Row:
        if record.invalid is not None:
            raise Skip(record.invalid, matched=False)
        said: Answer | None = None
        if record.trace is not None:
            text, label, raw, source = self._from_trace(record.trace)
        else:
            text, said = self._from_chat(record)
            raw, source = answer_key(self.task, said), "import"
            found = label_of(self.task, said)
            if found is None:
                raise Skip(f"the answer is not a valid label of the task: {_short(raw)}", True)
            label = found
        text, label = store.storable(text), store.storable(label)
        if len(label) > LABEL_CHARS:  # the column's size (PostgreSQL enforces it)
            raise Skip(f"the label is longer than {LABEL_CHARS} characters: {_short(label)}", True)
        raw = store.storable(raw) if raw is not None else None
        prompt = said.prompt_tokens if said is not None else _int(record.trace, "prompt_tokens")
        completion = (
            said.completion_tokens if said is not None else _int(record.trace, "completion_tokens")
        )
        cost = record.cost_usd
        if cost is None and said is not None and self.entry is not None:
            cost = call_cost(self.entry, prompt, completion)
        values = {
            "task": self.task.name,
            "input": text,
            "label": label,
            "valid": True,
            "raw_output": raw,
            "model": self.task.teacher,
            "source": source,
            "latency_ms": record.latency_ms or 0.0,  # not in every log; nothing reads it yet
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "cost_usd": cost,
            "created_at": record.created_at or now(),
        }
        return Row(digest(text, raw if raw is not None else label), values)

    def _from_chat(self, record: LogRecord) -> tuple[str, Answer]:
        task = self.task
        if record.body is None or record.other is not None:
            raise _not_matched(record.other or "no request")
        body = {**record.body, "model": self.model} if self.model else record.body
        try:
            validate_chat(body)
        except ClientError as err:
            raise Skip(f"the request is not a valid chat request: {err.message}", False) from None
        matched = self.matcher.match(body)
        if matched is not None and matched.name != task.name:
            raise _not_matched(f"it matches task `{matched.name}` first")
        text = task_input(task, body["messages"]) if matched is not None else None
        if text is None:
            raise _not_matched(self.matcher.why_not(task, body))
        if record.failure is not None or record.completion is None:
            raise Skip(record.failure or "no response", True)
        try:
            completion = Completion.checked(json.dumps(record.completion).encode())
            said = completion.answer()
        except UpstreamError as err:
            raise Skip(err.message.replace("upstream sent", "the log holds"), True) from None
        except (KeyError, TypeError, IndexError) as exc:
            raise Skip(f"the response is not a chat completion: {exc}", True) from None
        return text, said

    def _from_trace(self, obj: dict[str, Any]) -> tuple[str, str, str | None, str]:
        """(input, label, raw answer, source) of a trace line, under the task's rules."""
        task = self.task
        named = obj.get("task")
        if named is not None and named != task.name:
            raise _not_matched(f"its `task` is `{named}`")
        text = obj["input"].strip()
        if not text:
            raise Skip("the input is empty", True)
        given = obj.get("source") or "teacher"
        if given not in SOURCES:
            raise Skip(f"`source` {given!r} is not one of {', '.join(SOURCES)}", True)
        # A model's hard cases and forced tool calls stay what they are: never a sample.
        source = given if given in (TRAIN_ONLY, ARGUMENTS_ONLY) else "import"
        raw: str | None = obj.get("raw_output")
        if task.kind == "tools":
            said = _tool_answer(raw) if raw is not None else None
            label = label_of(task, said) if said is not None else None
            if label is None:
                raise Skip(
                    "a tool task's trace needs `raw_output` holding the teacher's calls "
                    "(as `tracer traces export` writes them)",
                    True,
                )
            if label != obj["label"]:
                raise Skip(
                    f"`label` {obj['label']!r} disagrees with `raw_output` ({label!r})", True
                )
            return text, label, raw, source
        stated = parse_label(obj["label"], "text", None, task.labels)
        if stated is None:
            raise Skip(f"`label` {_short(obj['label'])} is not one of the task's labels", True)
        if raw is None:
            if task.output.format == "json":
                raise Skip(
                    "a JSON task's trace needs `raw_output`, the teacher's JSON answer: "
                    "the label alone is not what the teacher wrote",
                    True,
                )
            return text, stated, obj["label"], source  # a trace without it: the label as written
        label = parse_label(raw, task.output.format, task.output.field, task.labels)
        if label is None:
            raise Skip(f"`raw_output` {_short(raw)} is not a valid answer of the task", True)
        if label != stated:
            raise Skip(f"`label` {obj['label']!r} disagrees with `raw_output` ({label!r})", True)
        return text, label, raw, source


def _int(obj: dict[str, Any] | None, key: str) -> int | None:
    value = (obj or {}).get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


async def _insert_chunk(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    await conn.execute(insert(TraceRow), rows)


async def save(engine: AsyncEngine, rows: Sequence[Row], task: str, dry_run: bool) -> int:
    """Store the rows that are not in the store yet, all in one transaction; how many
    were already there."""
    await store.create_schema(engine)  # what a server would do on start; a new store's tables
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":  # two imports of one task: one after the other
            await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": IMPORT_LOCK})
        stored: set[bytes] = set()
        query = select(TraceRow.input, TraceRow.raw_output, TraceRow.label).where(
            TraceRow.task == task
        )
        async for input_text, raw, label in await conn.stream(query):
            stored.add(digest(input_text, raw if raw is not None else label or ""))
        fresh = [row.values for row in rows if row.digest not in stored]
        if not dry_run:
            for start in range(0, len(fresh), CHUNK):
                await _insert_chunk(conn, fresh[start : start + CHUNK])
    return len(rows) - len(fresh)


async def import_rows(
    url: str, rows: Sequence[Row], report: ImportReport, dry_run: bool = False
) -> ImportReport:
    engine = store.create_engine(url)
    try:
        report.already_stored = await save(engine, rows, report.task, dry_run)
    finally:
        await engine.dispose()
    report.stored = len(rows) - report.already_stored
    return report


__all__ = ["Format", "ImportReport", "Importer", "import_rows"]
