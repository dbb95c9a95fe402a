"""Calls to the upstream LLMs, and what their failures mean to the client.

OpenAI-compatible upstreams (``openai/...`` models) are reached through a byte relay
(`relay.py`); every other provider through LiteLLM's async API, which translates.
Both give the caller the same two shapes: a `Completion` (the JSON bytes) or a
`CompletionStream` (server-sent event bytes), each able to say, once read, what
the teacher answered and how many tokens it used.

The proxy never retries an answer: the client's own SDK does, and a hidden retry would double
the latency it measures. Every error message leaving this module has had the
configured secrets scrubbed from it.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import AsyncIterator, Collection, Mapping
from typing import Any

# LiteLLM fetches a price map from the network at import unless told otherwise.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import httpx
import litellm
from litellm.exceptions import APIConnectionError as LiteLLMConnectionError
from litellm.exceptions import Timeout as LiteLLMTimeout

from .answers import Completion, CompletionStream
from .config import Config, ModelEntry
from .errors import UpstreamError, passed_on
from .relay import Relay, RelayStatusError, is_timeout, is_unreachable, relayable
from .validate import CHAT_PARAMS, EMBEDDING_PARAMS

# Keys LiteLLM adds to OpenAI's objects; a client of the proxy should not see them.
_LITELLM_FIELDS = frozenset({"provider_specific_fields"})
# Keys in OpenAI-style messages are masked like "sk-abc***xyz"; drop even those.
_KEY_LIKE = re.compile(r"\b(sk|key|tok)-[A-Za-z0-9_\-*]{6,}")
MAX_MESSAGE = 2000  # characters of an upstream error message passed on


class Upstream:
    """Resolves a client-facing model name and calls it the cheapest correct way."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._secrets = sorted(config.secrets(), key=len, reverse=True)
        self._timeout = config.server.upstream_timeout_seconds
        self._relay = Relay(self._timeout)
        self._relay_on = config.server.upstream_client == "auto"
        self._balancers = {
            name: Balancer(config.models(name))
            for name in dict.fromkeys(m.model_name for m in config.model_list)
        }
        litellm.suppress_debug_info = True
        litellm.telemetry = False

    async def start(self) -> None:
        await self._relay.start()

    async def close(self) -> None:
        await self._relay.close()
        # LiteLLM caches clients bound to this event loop; close them before it closes.
        await litellm.close_litellm_async_clients()  # type: ignore[attr-defined,no-untyped-call]

    def entry(self, model_name: str) -> ModelEntry | None:
        """The entry to call for a model_name: one of several in turn, when it is repeated."""
        balancer = self._balancers.get(model_name)
        return balancer.pick() if balancer is not None else None

    def _relayed(self, entry: ModelEntry) -> bool:
        return self._relay_on and relayable(entry)

    async def complete(
        self, entry: ModelEntry, body: dict[str, Any]
    ) -> Completion | CompletionStream:
        """Send a chat completion; a stream is returned before its first bytes are read.

        A 200 that is not a whole completion raises UpstreamError (502) like any failure.
        """
        stream = bool(body.get("stream"))
        try:
            if self._relayed(entry):
                if not stream:
                    raw = await self._relay.post(entry, "/chat/completions", body)
                    return Completion.checked(raw)
                chunks = self._mapped(self._relay.stream(entry, "/chat/completions", body))
            else:
                result = await litellm.acompletion(**self._litellm_kwargs(entry, body, CHAT_PARAMS))
                if not stream:
                    return Completion.checked(openai_json(result).encode())
                chunks = self._mapped(_litellm_events(result))
        except UpstreamError:
            raise
        except Exception as exc:
            raise self.map_error(exc) from None
        return CompletionStream(chunks, self.clean)

    async def embed(self, entry: ModelEntry, body: dict[str, Any]) -> Completion:
        try:
            if self._relayed(entry):
                return Completion.checked(
                    await self._relay.post(entry, "/embeddings", body), "embeddings"
                )
            result = await litellm.aembedding(**self._litellm_kwargs(entry, body, EMBEDDING_PARAMS))
            return Completion.checked(openai_json(result).encode(), "embeddings")
        except UpstreamError:
            raise
        except Exception as exc:
            raise self.map_error(exc) from None

    def _litellm_kwargs(
        self, entry: ModelEntry, body: dict[str, Any], allowed: Collection[str]
    ) -> dict[str, Any]:
        """The request's own parameters (allow-listed again here), then the config's.

        Nothing from the body may reach LiteLLM's control arguments: the config alone
        says where the call goes, with which key and timeout.
        """
        kwargs = {k: v for k, v in body.items() if k in allowed and k != "model"}
        kwargs.update(entry.litellm_params.call_kwargs())
        kwargs["timeout"] = entry.litellm_params.timeout or self._timeout
        kwargs["max_retries"] = 0
        kwargs["num_retries"] = 0
        return kwargs

    async def _mapped(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Iterate a stream, mapping a failure mid-way like one at the start."""
        try:
            async for chunk in chunks:
                yield chunk
        except Exception as exc:
            raise self.map_error(exc) from None

    def clean(self, text: str) -> str:
        """An upstream's message as a client may see it: no secrets, cut to length."""
        return self.scrub(text)[:MAX_MESSAGE]

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return _KEY_LIKE.sub("***", text)

    def map_error(self, exc: BaseException) -> UpstreamError:
        """Upstream 4xx as is; 5xx and no connection 502; timeout 504.

        Secrets are scrubbed from the whole text before it is cut to length, so a key
        that straddles the cut cannot leak its first characters.
        """
        if isinstance(exc, RelayStatusError):
            message, error_type, code = exc.error_fields()
            error = self._status_error(exc.status, self.clean(message), error_type, code)
            error.headers = passed_on(exc.headers)
            return error
        error = self._map_exception(exc, self.clean(_message(exc)))
        response = getattr(exc, "response", None)
        headers = getattr(exc, "litellm_response_headers", None) or getattr(
            response, "headers", None
        )
        if isinstance(headers, Mapping):
            error.headers = passed_on(headers)
        return error

    def _map_exception(self, exc: BaseException, message: str) -> UpstreamError:
        if _is_timeout(exc):
            return UpstreamError(504, "timeout", f"upstream timed out: {message}", "timeout")
        if _is_unreachable(exc):
            return UpstreamError(
                502, "unreachable", f"upstream unreachable: {message}", "upstream_error"
            )
        status = getattr(exc, "status_code", None)
        if isinstance(status, int):
            code = getattr(exc, "code", None)
            return self._status_error(
                status, message, None, code if isinstance(code, str) else None
            )
        return UpstreamError(502, "other", f"upstream call failed: {message}", "upstream_error")

    def _status_error(
        self, status: int, message: str, error_type: str | None, code: str | None
    ) -> UpstreamError:
        if status == 408:
            return UpstreamError(504, "timeout", f"upstream timed out: {message}", "timeout")
        if 400 <= status < 500:
            return UpstreamError(
                status, "status_4xx", message, error_type or _error_type(status), code
            )
        return UpstreamError(
            502, "status_5xx", f"upstream answered {status}: {message}", "upstream_error"
        )


class Balancer:
    """Load balancing over a model_name's entries: LiteLLM's `simple-shuffle`.

    Each call picks an entry at random, weighted by `litellm_params.weight` when any entry
    has one, else `rpm`, else `tpm`, else equally. Random rather than in turn: a caller
    that looks an entry up more than once for one request (and uses only the last) would
    otherwise always land on the same entry. One entry: no draw.
    """

    def __init__(self, entries: list[ModelEntry], rng: random.Random | None = None) -> None:
        self.entries = entries
        self.weights = _weights(entries)
        self._rng = rng or random.Random()

    def pick(self) -> ModelEntry:
        if len(self.entries) == 1:
            return self.entries[0]
        return self._rng.choices(self.entries, weights=self.weights)[0]


def _weights(entries: list[ModelEntry]) -> list[float]:
    for key in ("weight", "rpm", "tpm"):
        values = [getattr(e.litellm_params, key) for e in entries]
        if any(v is not None for v in values) and sum(v or 0.0 for v in values) > 0:
            return [float(v or 0.0) for v in values]
    return [1.0] * len(entries)


async def _litellm_events(stream: Any) -> AsyncIterator[bytes]:
    async for chunk in stream:
        yield f"data: {openai_json(chunk)}\n\n".encode()
    yield b"data: [DONE]\n\n"


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and what caused it: LiteLLM re-wraps the transport's error."""
    links: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and len(links) < 8:
        links.append(seen)
        seen = seen.__cause__ or seen.__context__
    return links


def _is_timeout(exc: BaseException) -> bool:
    timeouts = (LiteLLMTimeout, TimeoutError, httpx.TimeoutException)
    return (
        any(isinstance(e, timeouts) or is_timeout(e) for e in _chain(exc))
        or "timeout on reading data" in str(exc).lower()
    )


def _is_unreachable(exc: BaseException) -> bool:
    failures = (LiteLLMConnectionError, ConnectionError, httpx.ConnectError)
    return any(isinstance(e, failures) or is_unreachable(e) for e in _chain(exc)) or str(
        exc
    ).rstrip().endswith("Connection error.")


def _message(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    # LiteLLM prefixes its provider chain ("litellm.BadRequestError: OpenAIException - ...").
    return re.sub(r"^(litellm\.\w+: )?(\w+Exception - )?", "", str(text)).strip()


def _error_type(status: int) -> str:
    return {
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        429: "rate_limit_error",
    }.get(status, "invalid_request_error")


def openai_json(response: Any) -> str:
    """Serialise a LiteLLM response as the upstream sent it, minus LiteLLM's additions."""
    return json.dumps(_without_litellm_fields(response.model_dump(exclude_none=True)))


def _without_litellm_fields(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_litellm_fields(v) for k, v in value.items() if k not in _LITELLM_FIELDS}
    if isinstance(value, list):
        return [_without_litellm_fields(v) for v in value]
    return value
