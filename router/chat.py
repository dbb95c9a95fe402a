"""How a chat request maps to a task input, and a label back to a chat completion.

Kept free of configuration types so that the serving path depends on plain values:
the proxy passes what its task config says.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

MessageChoice = Literal["last_user", "first_user", "all_user"]
OutputFormat = Literal["text", "json"]

_QUOTES = "\"'`“”‘’"
_FENCE = re.compile(r"^```[a-zA-Z]*\s*(.*?)\s*```$", re.DOTALL)
_SPACE = re.compile(r"\s+")
# The longest label: the stores' label columns. A longer answer is prose, not a class
# (and PostgreSQL would refuse the row where SQLite would keep it).
MAX_LABEL_CHARS = 256


def message_text(message: Mapping[str, Any]) -> str | None:
    """The text of a message whose content is a string or a list of text parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if parts and all(isinstance(p, str) for p in parts):
            return "\n".join(parts)  # type: ignore[arg-type]
    return None


def system_prompt(messages: Sequence[Mapping[str, Any]]) -> str:
    return "\n".join(
        text
        for m in messages
        if m.get("role") in ("system", "developer") and (text := message_text(m)) is not None
    )


def extract_input(
    messages: Sequence[Mapping[str, Any]],
    message: MessageChoice = "last_user",
    pattern: str | None = None,
) -> str | None:
    """The classifier's input, or None when the request does not carry one."""
    texts = [message_text(m) for m in messages if m.get("role") == "user"]
    if not texts or any(t is None for t in texts):
        return None
    chosen = texts[-1] if message == "last_user" else texts[0] if message == "first_user" else None
    text = "\n".join(t for t in texts if t) if chosen is None else chosen
    if pattern is not None and text is not None:
        found = re.search(pattern, text, re.DOTALL)
        if found is None:
            return None
        text = found.group(1) if found.groups() else found.group(0)
    text = (text or "").strip()
    return text or None


def normalise_label(raw: str) -> str:
    """Case, whitespace and quotes folded, so 'Card_Arrival.' and "card_arrival" agree."""
    text = _SPACE.sub(" ", raw).strip()
    while text and (text[0] in _QUOTES or text[-1] in _QUOTES + "."):
        text = text.strip(_QUOTES).rstrip(".").strip()
    return text.lower()


def parse_label(
    raw: str | None,
    output_format: OutputFormat = "text",
    field: str | None = None,
    labels: Sequence[str] | None = None,
) -> str | None:
    """The teacher's label, or None when the answer is not a valid one.

    With a closed label set the answer is mapped to the set's own spelling;
    anything outside it is invalid, so it is stored but never trained on.
    """
    if raw is None:
        return None
    text = raw.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1)
    if output_format == "json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            return None
        value = obj.get(field) if isinstance(obj, dict) and field else None
        if not isinstance(value, str | int | bool):
            return None
        text = str(value)
    label = normalise_label(text)
    if not label or len(label) > MAX_LABEL_CHARS:
        return None
    if labels is None:
        return label
    canonical = {normalise_label(name): name for name in labels}
    return canonical.get(label)


def render_label(label: str, output_format: OutputFormat = "text", field: str | None = None) -> str:
    """A stand-in answer for a label, for artifacts that keep no answers of the teacher's."""
    if output_format == "json":
        return json.dumps({field or "label": label})
    return label


def _parsed(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def same_answer(a: str, b: str, output_format: OutputFormat = "text") -> bool:
    """Do two answers say the same? Exactly equal text, or equal parsed JSON for a JSON
    task (where key order and spacing are formatting, not content)."""
    if a == b:
        return True
    return output_format == "json" and _parsed(a) == _parsed(b)


def _completion_id() -> str:
    return f"chatcmpl-tracer-{uuid.uuid4().hex[:24]}"


def completion_body(
    message: Mapping[str, Any], finish_reason: str, model: str,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """A chat.completion object with one choice; usage zero (no model was billed)."""
    body: dict[str, Any] = {
        "id": _completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": dict(message), "logprobs": None, "finish_reason": finish_reason}
        ],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }
    if extra:
        body.update(extra)
    return body


def completion_stream(
    deltas: Sequence[tuple[Mapping[str, Any], str | None]], model: str,
    include_usage: bool = False, extra: Mapping[str, Any] | None = None,
) -> Iterator[str]:  # fmt: skip
    """The SSE events of a streamed choice: each (delta, finish_reason), `extra` on the
    last one, then [usage] and [DONE], as OpenAI sends them."""
    base = {
        "id": _completion_id(),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }
    for i, (delta, finish) in enumerate(deltas):
        chunk = {**base, "choices": [{"index": 0, "delta": dict(delta), "finish_reason": finish}]}
        if extra and i == len(deltas) - 1:
            chunk.update(extra)
        yield f"data: {json.dumps(chunk)}\n\n"
    if include_usage:
        usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        yield f"data: {json.dumps({**base, 'choices': [], 'usage': usage})}\n\n"
    yield "data: [DONE]\n\n"


def synthesize_completion(
    content: str, model: str, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A chat.completion object for a locally answered request."""
    return completion_body({"role": "assistant", "content": content}, "stop", model, extra)


def synthesize_stream(
    content: str,
    model: str,
    include_usage: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> Iterator[str]:
    """The SSE events of a streamed answer: role, content, stop, [usage], [DONE]."""
    deltas: list[tuple[Mapping[str, Any], str | None]] = [
        ({"role": "assistant", "content": ""}, None),
        ({"content": content}, None),
        ({}, "stop"),
    ]
    return completion_stream(deltas, model, include_usage, extra)
