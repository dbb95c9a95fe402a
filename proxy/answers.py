"""What an upstream answered: a chat completion as JSON bytes or as server-sent events.

Both shapes are checked before anything is made of them: a 200 whose body is not a
complete completion (not JSON, truncated, no choices), or a stream that ends
without a `finish_reason` and `[DONE]`, is an upstream failure (a 502, or an error
event mid-stream), never a success and never a trace. Once read, each can say what
the teacher answered: its text, its tool calls, and the tokens it used.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import UpstreamError

_EVENT_END = re.compile(rb"\r?\n\r?\n")


def invalid(message: str) -> UpstreamError:
    return UpstreamError(
        502, "invalid", f"upstream sent an invalid answer: {message}", "upstream_error"
    )


@dataclass
class Answer:
    """The teacher's message: text and/or tool calls, with usage when it was reported."""

    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    model: str | None = None  # the model its answer names (a dated snapshot, often)

    def message(self) -> dict[str, Any]:
        """The assistant message as OpenAI shapes it (for traces and canonical answers)."""
        out: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = self.tool_calls
        return out


def _text(value: Any) -> str:
    """A streamed string field; anything else (a number, an object) reads as nothing."""
    return value if isinstance(value, str) else ""


def _usage(usage: Any) -> tuple[int | None, int | None]:
    if not isinstance(usage, dict):
        return None, None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return (
        prompt if isinstance(prompt, int) else None,
        completion if isinstance(completion, int) else None,
    )


def _tool_calls(raw: Any) -> list[dict[str, Any]] | None:
    if not isinstance(raw, list) or not raw:
        return None
    calls = []
    for call in raw:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise invalid("a tool call without a function name")
        arguments = function.get("arguments")
        calls.append(
            {
                "id": str(call.get("id") or ""),
                "type": "function",
                "function": {
                    "name": function["name"],
                    "arguments": arguments if isinstance(arguments, str) else "",
                },
            }
        )
    return calls


@dataclass
class Completion:
    """A non-streamed answer: the bytes as the upstream sent them, checked once."""

    body: bytes
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def checked(cls, body: bytes, kind: str = "chat") -> Completion:
        """Parse and check the body; raise a 502-mapped UpstreamError if it is not whole."""
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            raise invalid("the body is not JSON (truncated?)") from None
        if not isinstance(data, dict):
            raise invalid("the body is not a JSON object")
        if kind == "chat":
            choices = data.get("choices")
            if not isinstance(choices, list) or not choices:
                raise invalid("no choices")
            if not all(isinstance(c, dict) and isinstance(c.get("message"), dict) for c in choices):
                raise invalid("a choice without a message")
        elif not isinstance(data.get("data"), list):
            raise invalid("no data")
        return cls(body, data)

    def answer(self) -> Answer:
        message = self.data["choices"][0]["message"]
        content = message.get("content")
        model = self.data.get("model")
        return Answer(
            content if isinstance(content, str) else None,
            _tool_calls(message.get("tool_calls")),
            *_usage(self.data.get("usage")),
            model if isinstance(model, str) else None,
        )


@dataclass
class CompletionStream:
    """Server-sent event bytes, relayed as they come and read on the way for the answer.

    Raises UpstreamError at the end when the stream stopped before it was complete, and
    at an error event or an event of the wrong shape (its message passed through
    `clean`, which takes the upstream's secrets out: an upstream may echo its key).
    """

    chunks: AsyncIterator[bytes]
    clean: Callable[[str], str] = str
    _buffer: bytes = b""
    _parts: list[str] = field(default_factory=list)
    _calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    _usage: tuple[int | None, int | None] = (None, None)
    _model: str | None = None
    _finished: bool = False
    _done: bool = False

    def __aiter__(self) -> CompletionStream:
        return self

    async def __anext__(self) -> bytes:
        try:
            chunk = await anext(self.chunks)
        except StopAsyncIteration:
            if self._buffer.strip():
                self._feed(b"\n\n")
            if not (self._finished and self._done):
                missing = "[DONE]" if self._finished else "a finish_reason"
                raise invalid(f"the stream ended without {missing}") from None
            raise
        self._feed(chunk)
        return chunk

    def _feed(self, chunk: bytes) -> None:
        self._buffer += chunk
        *events, self._buffer = _EVENT_END.split(self._buffer)
        for event in events:
            for line in event.splitlines():
                if line.startswith(b"data:"):
                    self._event(line[5:].strip())

    def _event(self, payload: bytes) -> None:
        if payload == b"[DONE]":
            self._done = True
            return
        try:
            data = json.loads(payload)
        except (ValueError, RecursionError):
            raise invalid("an event that is not JSON") from None
        if not isinstance(data, dict):
            raise invalid("an event that is not a JSON object")
        error = data.get("error")
        if error is not None:
            message = error.get("message") if isinstance(error, dict) else error
            raise UpstreamError(502, "status_5xx",
                                f"upstream failed mid-stream: {self.clean(str(message))}",
                                "upstream_error")  # fmt: skip
        choices = data.get("choices") or []
        if not isinstance(choices, list):
            raise invalid("an event whose choices are not a list")
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            if choice.get("finish_reason"):
                self._finished = True
            if choice.get("index", 0) == 0:
                delta = choice.get("delta") or {}
                if not isinstance(delta, dict):
                    raise invalid("a choice whose delta is not an object")
                self._delta(delta)
        if data.get("usage"):
            self._usage = _usage(data["usage"])
        if isinstance(data.get("model"), str):
            self._model = data["model"]

    def _delta(self, delta: dict[str, Any]) -> None:
        piece = delta.get("content")
        if isinstance(piece, str):
            self._parts.append(piece)
        calls = delta.get("tool_calls") or []
        if not isinstance(calls, list):
            raise invalid("a delta whose tool_calls are not a list")
        for call in calls:
            if not isinstance(call, dict):
                continue
            index, function = call.get("index") or 0, call.get("function") or {}
            if not isinstance(index, int) or not isinstance(function, dict):
                raise invalid("a tool call delta of the wrong shape")
            slot = self._calls.setdefault(index, {"id": "", "name": "", "arguments": ""})
            slot["id"] = _text(call.get("id")) or slot["id"]
            slot["name"] += _text(function.get("name"))
            slot["arguments"] += _text(function.get("arguments"))

    def answer(self) -> Answer:
        calls = [
            {
                "id": c["id"],
                "type": "function",
                "function": {"name": c["name"], "arguments": c["arguments"]},
            }
            for _, c in sorted(self._calls.items())
        ]
        content = "".join(self._parts) if self._parts or not calls else None
        return Answer(content, calls or None, *self._usage, self._model)
