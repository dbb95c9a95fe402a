"""The `tracer` field in an upstream's answer to a task request, the upstream's bytes kept.

A local answer carries the field from the start; an upstream answer gets it spliced
in, so a client reads the same facts (which lane answered, the label, why) whoever
answered. The upstream's own bytes are kept as they are: a JSON body gains one last
key; a stream gains the key in the event that carries the `finish_reason`, as a local
stream does, and every other event passes unchanged.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from typing import Any

_EVENT_END = re.compile(rb"\r?\n\r?\n")

Field = Mapping[str, Any]


def splice(obj: bytes, field: Field) -> bytes:
    """A JSON object's bytes with `"tracer": field` added as its last key."""
    end = obj.rstrip()
    if not end.endswith(b"}"):
        return obj
    inner = end[:-1].rstrip()
    comma = b"" if inner.endswith(b"{") else b","
    return inner + comma + b'"tracer":' + json.dumps(field).encode() + b"}" + obj[len(end) :]


def _finishes(payload: bytes) -> bool:
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError):
        return False
    choices = data.get("choices") if isinstance(data, dict) else None
    return isinstance(choices, list) and any(
        isinstance(c, dict) and c.get("finish_reason") for c in choices
    )


async def splice_stream(
    chunks: AsyncIterator[bytes], field: Callable[[], Field]
) -> AsyncGenerator[bytes, None]:
    """Relay SSE bytes, adding `field()` to the first event that finishes a choice.

    Until then bytes are passed on by whole events; after it, as they come. `field` is
    called when that event arrives, so it may read the answer so far.
    """
    buffer, spliced = b"", False
    async for chunk in chunks:
        if spliced:
            yield chunk
            continue
        buffer += chunk
        out = b""
        while not spliced and (end := _EVENT_END.search(buffer)):
            event, term = buffer[: end.start()], buffer[end.start() : end.end()]
            buffer = buffer[end.end() :]
            new = _spliced_event(event, field)
            spliced = new is not None
            out += (new if new is not None else event) + term
        if spliced:
            out, buffer = out + buffer, b""
        if out:
            yield out
    if buffer:
        yield buffer


def _spliced_event(event: bytes, field: Callable[[], Field]) -> bytes | None:
    """A one-line `data:` event that finishes a choice, with the field; else None."""
    if not event.startswith(b"data:") or b"\n" in event:
        return None
    rest = event[5:]
    payload = rest.lstrip()
    if not _finishes(payload):
        return None
    return b"data:" + rest[: len(rest) - len(payload)] + splice(payload, field())
