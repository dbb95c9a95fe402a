"""Calls to the upstream LLMs through LiteLLM's async API, and what their failures mean.

The proxy never retries: the client's own SDK does, and a hidden retry would double
the latency it measures. Every error message leaving this module has had the
configured secrets scrubbed from it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

# LiteLLM fetches a price map from the network at import unless told otherwise.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import httpx
import litellm

from .config import Config, ModelEntry

# Keys LiteLLM adds to OpenAI's objects; a client of the proxy should not see them.
_LITELLM_FIELDS = frozenset({"provider_specific_fields"})

# Keys in OpenAI-style messages are masked like "sk-abc***xyz"; drop even those.
_KEY_LIKE = re.compile(r"\b(sk|key|tok)-[A-Za-z0-9_\-*]{6,}")


@dataclass(eq=False)
class UpstreamError(Exception):
    """A failure to relay, already mapped to what the client is told."""

    status: int
    kind: str  # timeout | unreachable | status_4xx | status_5xx | other
    message: str
    error_type: str
    code: str | None = None


class Upstream:
    """Resolves a client-facing model name to LiteLLM parameters and makes the call."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._secrets = sorted(config.secrets(), key=len, reverse=True)
        self._timeout = config.server.upstream_timeout_seconds
        litellm.suppress_debug_info = True
        litellm.telemetry = False

    def entry(self, model_name: str) -> ModelEntry | None:
        return self.config.model(model_name)

    def _kwargs(self, entry: ModelEntry) -> dict[str, Any]:
        kwargs = entry.litellm_params.call_kwargs()
        kwargs.setdefault("timeout", self._timeout)
        kwargs["max_retries"] = 0
        kwargs["num_retries"] = 0
        return kwargs

    async def complete(self, entry: ModelEntry, body: dict[str, Any]) -> Any:
        """A ModelResponse, or for ``stream`` a LiteLLM stream wrapper (async iterable)."""
        params = {k: v for k, v in body.items() if k != "model"}
        try:
            return await litellm.acompletion(**params, **self._kwargs(entry))
        except Exception as exc:
            raise self.map_error(exc) from None

    async def relay(self, stream: Any) -> AsyncIterator[Any]:
        """Iterate a stream, mapping a failure mid-way like one at the start."""
        try:
            async for chunk in stream:
                yield chunk
        except Exception as exc:
            raise self.map_error(exc) from None

    async def embed(self, entry: ModelEntry, body: dict[str, Any]) -> Any:
        params = {k: v for k, v in body.items() if k != "model"}
        try:
            return await litellm.aembedding(**params, **self._kwargs(entry))
        except Exception as exc:
            raise self.map_error(exc) from None

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return _KEY_LIKE.sub("***", text)

    def map_error(self, exc: BaseException) -> UpstreamError:
        """Upstream 4xx as is; 5xx and no connection 502; timeout 504."""
        message = self.scrub(_message(exc))
        if _is_timeout(exc):
            return UpstreamError(504, "timeout", f"upstream timed out: {message}", "timeout")
        if _is_unreachable(exc):
            return UpstreamError(
                502, "unreachable", f"upstream unreachable: {message}", "upstream_error"
            )
        status = getattr(exc, "status_code", None)
        if isinstance(status, int) and 400 <= status < 500 and status != 408:
            code = getattr(exc, "code", None)
            return UpstreamError(
                status,
                "status_4xx",
                message,
                _error_type(status),
                code if isinstance(code, str) else None,
            )
        if status == 408:
            return UpstreamError(504, "timeout", f"upstream timed out: {message}", "timeout")
        if isinstance(status, int) and status >= 500:
            return UpstreamError(
                502, "status_5xx", f"upstream answered {status}: {message}", "upstream_error"
            )
        return UpstreamError(502, "other", f"upstream call failed: {message}", "upstream_error")


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and what caused it: LiteLLM re-wraps the transport's error."""
    links: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and len(links) < 8:
        links.append(seen)
        seen = seen.__cause__ or seen.__context__
    return links


def _is_timeout(exc: BaseException) -> bool:
    timeouts = (litellm.Timeout, TimeoutError, httpx.TimeoutException)
    return any(isinstance(e, timeouts) for e in _chain(exc)) or (
        "timeout on reading data" in str(exc).lower()
    )


def _is_unreachable(exc: BaseException) -> bool:
    failures = (litellm.APIConnectionError, ConnectionError, httpx.ConnectError)
    return any(isinstance(e, failures) for e in _chain(exc)) or str(exc).rstrip().endswith(
        "Connection error."
    )


def _message(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    # LiteLLM prefixes its provider chain ("litellm.BadRequestError: OpenAIException - ...").
    return re.sub(r"^(litellm\.\w+: )?(\w+Exception - )?", "", str(text)).strip()[:2000]


def _error_type(status: int) -> str:
    return {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        413: "invalid_request_error",
        422: "invalid_request_error",
        429: "rate_limit_error",
    }.get(status, "invalid_request_error")


def usage_of(response: Any) -> tuple[int | None, int | None]:
    usage = getattr(response, "usage", None)
    if usage is None:
        return None, None
    return getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None)


def cost_of(
    litellm_model: str, prompt_tokens: int | None, completion_tokens: int | None
) -> float | None:
    """Cost in USD from LiteLLM's price map; None for a model it does not price."""
    if prompt_tokens is None and completion_tokens is None:
        return None
    try:
        prompt_cost, completion_cost = litellm.cost_per_token(
            model=litellm_model,
            prompt_tokens=prompt_tokens or 0,
            completion_tokens=completion_tokens or 0,
        )
    except Exception:
        return None
    return float(prompt_cost + completion_cost)


def openai_json(response: Any) -> str:
    """Serialise a LiteLLM response as the upstream sent it, minus LiteLLM's additions."""
    return json.dumps(_without_litellm_fields(response.model_dump(exclude_none=True)))


def _without_litellm_fields(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_litellm_fields(v) for k, v in value.items() if k not in _LITELLM_FIELDS}
    if isinstance(value, list):
        return [_without_litellm_fields(v) for v in value]
    return value


def content_of(response: Any) -> str | None:
    choices: Sequence[Any] = getattr(response, "choices", None) or []
    if not choices:
        return None
    message = getattr(choices[0], "message", None)
    content = getattr(message, "content", None)
    return content if isinstance(content, str) else None
