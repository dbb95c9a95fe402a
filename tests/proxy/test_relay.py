"""The byte relay against a raw server that drops the first connection unanswered."""

from __future__ import annotations

import asyncio

from proxy.config import parse_config
from proxy.relay import Relay, RelayStatusError

ANSWER = b'{"choices": [{"message": {"content": "ok"}}]}'


async def flaky_server(dropped: list[int]) -> tuple[asyncio.Server, int]:
    """Closes the first connection without answering, as a server ending keep-alive does."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        if not dropped:
            dropped.append(1)
            writer.close()
            return
        status = b"200 OK" if len(dropped) == 1 else b"500 Internal Server Error"
        dropped.append(1)
        writer.write(
            b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(ANSWER)).encode() + b"\r\n\r\n" + ANSWER
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_a_dropped_connection_is_retried_once_and_an_answer_never():
    dropped: list[int] = []
    server, port = await flaky_server(dropped)
    config = parse_config(
        {
            "model_list": [
                {
                    "model_name": "m",
                    "litellm_params": {
                        "model": "openai/m",
                        "api_base": f"http://127.0.0.1:{port}/v1",
                    },
                }
            ]
        },
        env={},
    )
    relay = Relay(5.0)
    await relay.start()
    try:
        body = await relay.post(config.model_list[0], "/chat/completions", {"messages": []})
        assert body == ANSWER and len(dropped) == 2  # the dropped attempt, then the answer
        try:
            await relay.post(config.model_list[0], "/chat/completions", {"messages": []})
        except RelayStatusError as err:
            assert err.status == 500
        else:
            raise AssertionError("a 500 must reach the caller")
        assert len(dropped) == 3  # the error status was not retried
    finally:
        await relay.close()
        server.close()
        await server.wait_closed()


def test_a_secret_straddling_the_cut_is_scrubbed_whole():
    """The message is scrubbed before it is cut to length: no prefix of a key survives."""
    from proxy.upstream import MAX_MESSAGE, Upstream

    key = "sk-live-0123456789abcdefghij0123456789"
    config = parse_config(
        {
            "model_list": [
                {"model_name": "m", "litellm_params": {"model": "openai/m", "api_key": key}}
            ]
        },
        env={},
    )
    upstream = Upstream(config)
    cuts = (500, MAX_MESSAGE)  # where the relay and the mapper used to cut before scrubbing
    for offset in [o for cut in cuts for o in range(cut - len(key), cut + 1)]:
        body = ("x" * offset + key + " tail").encode()
        error = upstream.map_error(RelayStatusError(400, body))
        assert "sk-live" not in error.message and key[:12] not in error.message
        assert len(error.message) <= MAX_MESSAGE
