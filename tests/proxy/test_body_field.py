"""Splicing the `tracer` field into an upstream's bytes, JSON or a stream cut anywhere."""

from __future__ import annotations

import json

import pytest

from proxy.body_field import splice, splice_stream

FIELD = {"lane": "teacher", "label": "card_arrival"}


def test_a_json_body_gains_one_last_key_and_keeps_its_bytes():
    body = b'{"id": "x",  "choices": [{"message": {"content": "a"}}]}\n'
    out = splice(body, FIELD)
    assert out.startswith(body.rstrip()[:-1]) and out.endswith(b"}\n")
    assert json.loads(out) == {**json.loads(body), "tracer": FIELD}
    assert json.loads(splice(b"{}", FIELD)) == {"tracer": FIELD}
    assert splice(b"[1]", FIELD) == b"[1]"  # not an object: left alone


EVENTS = (
    b'data: {"choices":[{"index":0,"delta":{"role":"assistant"},"finish_reason":null}]}\n\n'
    b'data: {"choices":[{"index":0,"delta":{"content":"card"},"finish_reason":null}]}\r\n\r\n'
    b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
    b'data: {"choices":[],"usage":{"total_tokens":3}}\n\n'
    b"data: [DONE]\n\n"
)


@pytest.mark.parametrize("size", [1, 7, 64, len(EVENTS)])
async def test_a_stream_gains_the_field_in_its_finishing_event_however_it_is_cut(size):
    async def chunks():
        for start in range(0, len(EVENTS), size):
            yield EVENTS[start : start + size]

    calls = []

    def field():
        calls.append(1)
        return FIELD

    out = b"".join([c async for c in splice_stream(chunks(), field)])
    assert len(calls) == 1
    payloads = [line[5:].strip() for line in out.splitlines() if line.startswith(b"data:")]
    assert payloads[-1] == b"[DONE]"
    parsed = [json.loads(p) for p in payloads[:-1]]
    assert [("tracer" in p) for p in parsed] == [False, False, True, False]
    assert parsed[2]["tracer"] == FIELD
    assert out.replace(b',"tracer":' + json.dumps(FIELD).encode(), b"") == EVENTS
