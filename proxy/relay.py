"""A byte relay to OpenAI-compatible upstreams, over one shared aiohttp session.

For a model LiteLLM would send to an OpenAI-compatible endpoint unchanged
(``openai/...``), translating the request into LiteLLM's objects and back costs
5-10 ms of CPU a call, more than the whole budget the proxy may add. Here the body
goes out with only ``model`` rewritten, and the upstream's bytes come back as
they are: status, JSON, and server-sent events chunk by chunk.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp

from .config import ModelEntry

OPENAI_BASE = "https://api.openai.com/v1"
# LiteLLM parameters the relay understands; an entry with any other goes through LiteLLM.
RELAY_PARAMS = frozenset(
    {"model", "api_key", "api_base", "timeout", "extra_headers", "organization"}
)


def relayable(entry: ModelEntry) -> bool:
    params = entry.litellm_params
    extras = set(params.model_dump(exclude_none=True)) | set(params.model_extra or {})
    return params.model.startswith("openai/") and extras <= RELAY_PARAMS


class RelayStatusError(Exception):
    """The upstream answered with an error status; its body is kept for the message."""

    def __init__(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(f"upstream status {status}")
        self.status = status
        self.body = body
        self.headers = dict(headers or {})

    def error_fields(self) -> tuple[str, str | None, str | None]:
        """(message, type, code) from an OpenAI-shaped error body, or the raw text."""
        try:
            error = json.loads(self.body).get("error")
        except (ValueError, AttributeError):
            error = None
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            code = error.get("code")
            kind = error.get("type")
            return (
                error["message"],
                kind if isinstance(kind, str) else None,
                code if isinstance(code, str) else None,
            )
        # Whole: the caller scrubs secrets from it before cutting it to length.
        return self.body.decode("utf-8", "replace") or f"status {self.status}", None, None


class Relay:
    """Owns the session; created in the app's lifespan, never at import."""

    def __init__(self, default_timeout: float) -> None:
        self.default_timeout = default_timeout
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        # Idle connections are dropped before common servers' own keep-alive (uvicorn: 5 s)
        # closes them under us.
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=4)
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=True)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _request(
        self, entry: ModelEntry, body: dict[str, Any]
    ) -> tuple[str, bytes, dict[str, str]]:
        params = entry.litellm_params
        base = (params.api_base or OPENAI_BASE).rstrip("/")
        headers = {"Content-Type": "application/json"}
        if params.api_key is not None:
            headers["Authorization"] = f"Bearer {params.api_key.get_secret_value()}"
        extra = params.model_extra or {}
        if isinstance(extra.get("organization"), str):
            headers["OpenAI-Organization"] = extra["organization"]
        if isinstance(extra.get("extra_headers"), dict):
            headers.update({str(k): str(v) for k, v in extra["extra_headers"].items()})
        payload = {**body, "model": params.model.removeprefix("openai/")}
        return base, json.dumps(payload).encode(), headers

    async def _send(
        self, url: str, payload: bytes, headers: dict[str, str], timeout: aiohttp.ClientTimeout
    ) -> aiohttp.ClientResponse:
        """Send once more on a fresh connection if the first attempt got no response.

        That is what a pooled keep-alive connection looks like when the server closed it
        as we reused it. Only a failure before the response began is retried; in the rare
        case that the upstream had read the whole request before the connection broke, it
        sees it twice. Any answer, error statuses included, is never retried.
        """
        assert self._session is not None, "Relay.start() was not awaited"
        try:
            return await self._session.post(url, data=payload, headers=headers, timeout=timeout)
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
            return await self._session.post(url, data=payload, headers=headers, timeout=timeout)

    async def post(self, entry: ModelEntry, path: str, body: dict[str, Any]) -> bytes:
        """A non-streamed call: the upstream's body bytes, or RelayStatusError."""
        assert self._session is not None, "Relay.start() was not awaited"
        base, payload, headers = self._request(entry, body)
        timeout = aiohttp.ClientTimeout(total=entry.litellm_params.timeout or self.default_timeout)
        resp = await self._send(base + path, payload, headers, timeout)
        async with resp:
            data = await resp.read()
            if resp.status != 200:
                raise RelayStatusError(resp.status, data, resp.headers)
            return data

    async def stream(
        self, entry: ModelEntry, path: str, body: dict[str, Any]
    ) -> AsyncIterator[bytes]:
        """A streamed call: raw chunks as they arrive (not split into events)."""
        assert self._session is not None, "Relay.start() was not awaited"
        base, payload, headers = self._request(entry, body)
        seconds = entry.litellm_params.timeout or self.default_timeout
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=seconds, sock_read=seconds)
        resp = await self._send(base + path, payload, headers, timeout)
        async with resp:
            if resp.status != 200:
                raise RelayStatusError(resp.status, await resp.read(), resp.headers)
            async for chunk in resp.content.iter_any():
                yield chunk


def is_timeout(exc: BaseException) -> bool:
    return isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError)


def is_unreachable(exc: BaseException) -> bool:
    return isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError | OSError)
