"""A streamed answer read on the way: an upstream's error or a malformed event ends it
as a 502 the client can read, without the upstream's secrets."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from proxy.answers import CompletionStream
from proxy.config import parse_config
from proxy.errors import UpstreamError
from proxy.upstream import Upstream

KEY = "sk-UPSTREAMSECRET-7f3a9c1d2e"
FIRST = {"choices": [{"index": 0, "delta": {"content": "card"}}]}


def upstream() -> Upstream:
    entry = {"model_name": "m", "litellm_params": {"model": "openai/m", "api_key": KEY}}
    return Upstream(parse_config({"model_list": [entry]}, env={}))


async def events(*payloads: Any) -> AsyncIterator[bytes]:
    for payload in payloads:
        yield f"data: {json.dumps(payload)}\n\n".encode()


async def read(stream: CompletionStream) -> list[bytes]:
    return [chunk async for chunk in stream]


@pytest.mark.parametrize(
    "error",
    [{"message": f"mid-stream failure, key {KEY}"}, f"mid-stream failure, key {KEY}"],
)
async def test_an_error_event_ends_the_stream_without_the_upstreams_key(error: Any):
    stream = CompletionStream(events(FIRST, {"error": error}), upstream().clean)
    with pytest.raises(UpstreamError) as failed:
        await read(stream)
    assert failed.value.status == 502 and "mid-stream failure" in failed.value.message
    assert KEY not in failed.value.message and "UPSTREAMSECRET" not in failed.value.message


@pytest.mark.parametrize(
    "event",
    [
        {"choices": 5},
        {"choices": [{"index": 0, "delta": ["x"]}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": "abc"}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"function": "x"}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": 7}}]},
    ],
)
async def test_an_event_of_the_wrong_shape_is_an_invalid_answer(event: dict[str, Any]):
    stream = CompletionStream(events(FIRST, event), upstream().clean)
    with pytest.raises(UpstreamError) as failed:
        await read(stream)
    assert failed.value.status == 502 and failed.value.kind == "invalid"


async def test_a_field_that_is_not_a_string_reads_as_nothing():
    call = {"index": 0, "id": 5, "function": {"name": "PlayMusic", "arguments": 7}}
    done = {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}

    async def chunks() -> AsyncIterator[bytes]:
        first = {"choices": [{"index": 0, "delta": {"tool_calls": [call]}}]}
        async for chunk in events(first, done):
            yield chunk
        yield b"data: [DONE]\n\n"

    stream = CompletionStream(chunks())
    await read(stream)
    expected = {"id": "", "type": "function", "function": {"name": "PlayMusic", "arguments": ""}}
    assert stream.answer().tool_calls == [expected]
