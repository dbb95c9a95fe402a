"""Tool calls: an agent's step as a task input and a label, and a whole call answered back.

- The **input** of a tool task is the user's text (chosen as `tasks[].input` says) and
  the names of the tools already called since the last user message, because an
  agent's next step depends on them.
- The **label** is the teacher's decision: the name of the tool it called; for
  parallel calls the sorted names joined by `+`; `message` for a reply with no call.
- A **whole call** is rendered as OpenAI's `message.tool_calls`, plain or streamed.
- `ToolCaller`, from an artifact's `tools` section, says per prediction whether the
  whole call may be answered locally (certified on whole-call agreement), only its
  name is sure (the request is narrowed to that tool), or neither.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from router.chat import (
    MAX_LABEL_CHARS,
    MessageChoice,
    completion_body,
    completion_stream,
    extract_input,
)
from router.errors import ArtifactError
from router.tool_args import ArgumentExtractor

MESSAGE = "message"  # the label of a reply that calls no tool
AFTER = "\n[after: "  # how the tools already called are appended to the input


def called_since_user(messages: Sequence[Mapping[str, Any]]) -> list[str]:
    """Names of the tools called (in assistant messages) since the last user message."""
    names: list[str] = []
    for message in messages:
        if message.get("role") == "user":
            names = []
        elif message.get("role") == "assistant":
            for call in message.get("tool_calls") or []:
                function = call.get("function") if isinstance(call, Mapping) else None
                if isinstance(function, Mapping) and isinstance(function.get("name"), str):
                    names.append(function["name"])
    return names


def tool_input(
    messages: Sequence[Mapping[str, Any]],
    message: MessageChoice = "last_user",
    pattern: str | None = None,
) -> str | None:
    """The user's text, then the tools called since it (when there are any)."""
    text = extract_input(messages, message, pattern)
    if text is None:
        return None
    called = called_since_user(messages)
    return text + (f"{AFTER}{', '.join(called)}]" if called else "")


def user_text(task_input: str) -> str:
    """The user's part of a tool task's input: where argument spans are found."""
    return task_input.split(AFTER, 1)[0]


def tool_label(tool_calls: Sequence[Mapping[str, Any]] | None, content: str | None) -> str | None:
    """The teacher's decision as a label; None for an answer that makes none."""
    if tool_calls:
        label = "+".join(sorted(str(c["function"]["name"]) for c in tool_calls))
        return label if len(label) <= MAX_LABEL_CHARS else None
    return MESSAGE if content else None


def parse_arguments(arguments: str) -> dict[str, Any] | None:
    """A call's arguments as a JSON object, or None when they are not one."""
    try:
        value = json.loads(arguments) if arguments else {}
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def call_json(tool_calls: Sequence[Mapping[str, Any]] | None, content: str | None) -> str:
    """The canonical text of an answer, for traces: its calls with parsed arguments, or
    its content. Two answers are the same when these are."""
    if tool_calls:
        calls = [
            {
                "name": c["function"]["name"],
                "arguments": parse_arguments(c["function"].get("arguments") or ""),
            }
            for c in tool_calls
        ]
        return json.dumps({"tool_calls": calls}, sort_keys=True, ensure_ascii=False)
    return json.dumps({"content": content}, ensure_ascii=False)


def _call_id() -> str:
    return f"call_tracer_{uuid.uuid4().hex[:20]}"


def tool_completion(
    name: str, arguments: Mapping[str, Any], model: str, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A chat.completion whose message calls `name`; usage zero (no model was billed)."""
    call = {
        "id": _call_id(),
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)},
    }
    message = {"role": "assistant", "content": None, "tool_calls": [call]}
    return completion_body(message, "tool_calls", model, extra)


def tool_stream(
    name: str,
    arguments: Mapping[str, Any],
    model: str,
    include_usage: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> Iterator[str]:
    """The SSE events of a streamed tool call, as OpenAI sends them."""
    text = json.dumps(arguments, ensure_ascii=False)
    opening = {"index": 0, "id": _call_id(), "type": "function",
               "function": {"name": name, "arguments": ""}}  # fmt: skip
    deltas: list[tuple[Mapping[str, Any], str | None]] = [
        ({"role": "assistant", "content": None, "tool_calls": [opening]}, None),
        ({"tool_calls": [{"index": 0, "function": {"arguments": text}}]}, None),
        ({}, "tool_calls"),
    ]
    return completion_stream(deltas, model, include_usage, extra)


@dataclass(frozen=True)
class ToolPlan:
    """What may be done with a prediction whose name the gate certified."""

    kind: Literal["whole", "narrow", "defer"]
    name: str
    arguments: dict[str, Any] | None = None
    score: float = 0.0  # the whole-call score: accept score times argument confidence
    reason: str = ""


def call_key(name: str, arguments: Mapping[str, Any] | None, message_text: str | None) -> str:
    """A local answer written as `call_json` writes the teacher's, to compare the two."""
    if name == MESSAGE:
        return call_json(None, message_text)
    call = {"function": {"name": name, "arguments": json.dumps(arguments or {})}}
    return call_json([call], None)


class ToolCaller:
    """An artifact's tool section: the argument extractor and the whole-call threshold."""

    def __init__(self, directory: Path, section: Mapping[str, Any], *, threads: int = 1) -> None:
        try:
            plan = json.loads((directory / str(section["plan"])).read_text(encoding="utf-8"))
            self.extractor = ArgumentExtractor(
                plan, directory / str(section["file"]), threads=threads
            )
        except (KeyError, OSError, ValueError) as exc:
            raise ArtifactError(f"manifest tools section is unusable: {exc}") from exc
        threshold = section.get("whole_threshold")
        self.whole_threshold = float(threshold) if isinstance(threshold, int | float) else None
        message = section.get("message") or {}
        self.message_text: str | None = (
            message.get("text") if message.get("answerable") is True else None
        )

    def plan(self, label: str, accept_score: float, text: str) -> ToolPlan:
        """Whole call when certified; narrowed when only the name is; else the teacher."""
        t = self.whole_threshold
        if label == MESSAGE:
            if self.message_text is not None and t is not None and accept_score >= t:
                return ToolPlan("whole", label, None, accept_score, "the teacher's one reply")
            return ToolPlan("defer", label, reason="a reply is answered locally only when "
                            "the teacher's text for it is constant and certified")  # fmt: skip
        if "+" in label:
            return ToolPlan("defer", label, reason="parallel calls go to the teacher")
        got = self.extractor.extract(label, user_text(text))
        if got is None:
            return ToolPlan("narrow", label, reason="its arguments cannot be reproduced")
        score = accept_score * got.confidence
        if t is not None and score >= t:
            return ToolPlan(
                "whole", label, got.arguments, score, f"whole call {score:.4f} >= {t:.4f}"
            )
        why = "no whole-call threshold certified" if t is None else f"{score:.4f} < {t:.4f}"
        return ToolPlan("narrow", label, got.arguments, score, f"arguments not sure ({why})")

    def key(self, plan: ToolPlan) -> str:
        """A whole call's answer as the teacher's traces write it."""
        return call_key(plan.name, plan.arguments, self.message_text)
