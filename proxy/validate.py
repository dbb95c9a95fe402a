"""What a client may send: OpenAI's request parameters, each checked, and nothing else.

Only the config decides where an upstream call goes, with which key and under which
limits. LiteLLM takes its own control arguments (``api_base``, ``base_url``,
``api_key``, ``mock_response``, ``timeout``, ``num_retries``, ...) in the same call as
the request's parameters, so a body passed through as keyword arguments could send
the configured key to a URL of the client's choosing, or make LiteLLM invent an
answer that would be stored as a teacher trace. Hence an allow-list, the same on both
upstream paths: a body with any other key is refused with a 400 that names it, as
OpenAI refuses an unknown argument.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from .http import ClientError

Check = Callable[[str, Any], None]

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


def _bad(name: str, what: str) -> ClientError:
    return ClientError(400, f"`{name}` must be {what}", param=name)


def _number(low: float, high: float) -> Check:
    def check(name: str, value: Any) -> None:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or not low <= value <= high:
            raise _bad(name, f"a number from {low:g} to {high:g}")

    return check


def _integer(low: int, high: int | None = None) -> Check:
    def check(name: str, value: Any) -> None:
        ok = isinstance(value, int) and not isinstance(value, bool)
        if not ok or value < low or (high is not None and value > high):
            raise _bad(
                name, f"an integer of at least {low}" + (f" and at most {high}" if high else "")
            )

    return check


def _of(kind: type | tuple[type, ...], what: str) -> Check:
    def check(name: str, value: Any) -> None:
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise _bad(name, what)

    return check


_bool = _of(bool, "a boolean")
_str = _of(str, "a string")
_object = _of(dict, "an object")
_list = _of(list, "an array")


def _objects(name: str, value: Any) -> None:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise _bad(name, "an array of objects")


def _stop(name: str, value: Any) -> None:
    if isinstance(value, str) or value is None:
        return
    if not (isinstance(value, list) and len(value) <= 4 and all(isinstance(v, str) for v in value)):
        raise _bad(name, "a string or an array of up to 4 strings")


def _str_or_object(name: str, value: Any) -> None:
    if not isinstance(value, str | dict):
        raise _bad(name, "a string or an object")


def _response_format(name: str, value: Any) -> None:
    if not isinstance(value, dict) or value.get("type") not in (
        "text",
        "json_object",
        "json_schema",
    ):
        raise _bad(name, 'an object whose `type` is "text", "json_object" or "json_schema"')
    if value["type"] == "json_schema" and not isinstance(value.get("json_schema"), dict):
        raise _bad(f"{name}.json_schema", "an object")


def _stream_options(name: str, value: Any) -> None:
    if not isinstance(value, dict):
        raise _bad(name, "an object")
    if "include_usage" in value and not isinstance(value["include_usage"], bool):
        raise _bad(f"{name}.include_usage", "a boolean")


def _logit_bias(name: str, value: Any) -> None:
    if not isinstance(value, dict) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and -100 <= v <= 100
        for v in value.values()
    ):
        raise _bad(name, "an object of token ids to numbers from -100 to 100")


def _messages(name: str, value: Any) -> None:
    if not isinstance(value, list) or not value:
        raise _bad(name, "a non-empty array")
    for i, message in enumerate(value):
        where = f"{name}[{i}]"
        if not isinstance(message, dict):
            raise _bad(where, "an object")
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise _bad(f"{where}.role", f"one of {sorted(ROLES)}")
        content = message.get("content")
        if not (content is None or isinstance(content, str) or _is_parts(content)):
            raise _bad(f"{where}.content", "a string or an array of content parts")
        for key in ("name", "tool_call_id"):
            if key in message and not isinstance(message[key], str):
                raise _bad(f"{where}.{key}", "a string")
        if "tool_calls" in message and message["tool_calls"] is not None:
            _objects(f"{where}.tool_calls", message["tool_calls"])


def _is_parts(content: object) -> bool:
    return isinstance(content, list) and all(
        isinstance(p, dict) and isinstance(p.get("type"), str) for p in content
    )


def _model(name: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise _bad(name, "a non-empty string")


# OpenAI's chat-completion parameters, plus the provider parameters LiteLLM translates.
CHAT_PARAMS: dict[str, Check] = {
    "model": _model,
    "messages": _messages,
    "audio": _object,
    "frequency_penalty": _number(-2, 2),
    "function_call": _str_or_object,
    "functions": _objects,
    "logit_bias": _logit_bias,
    "logprobs": _bool,
    "max_completion_tokens": _integer(1),
    "max_tokens": _integer(1),
    "metadata": _object,
    "modalities": _list,
    "n": _integer(1, 128),
    "parallel_tool_calls": _bool,
    "prediction": _object,
    "presence_penalty": _number(-2, 2),
    "prompt_cache_key": _str,
    "reasoning_effort": _str,
    "response_format": _response_format,
    "safety_identifier": _str,
    "seed": _integer(-(2**63)),
    "service_tier": _str,
    "stop": _stop,
    "store": _bool,
    "stream": _bool,
    "stream_options": _stream_options,
    "temperature": _number(0, 2),
    "tool_choice": _str_or_object,
    "tools": _objects,
    "top_logprobs": _integer(0, 20),
    "top_p": _number(0, 1),
    "user": _str,
    "verbosity": _str,
    "web_search_options": _object,
    # Provider parameters LiteLLM maps for non-OpenAI models.
    "top_k": _integer(0),
    "min_p": _number(0, 1),
    "repetition_penalty": _number(0, 10),
    "thinking": _object,
}

EMBEDDING_PARAMS: dict[str, Check] = {
    "model": _model,
    "input": lambda name, value: _embedding_input(name, value),
    "encoding_format": _str,
    "dimensions": _integer(1),
    "user": _str,
}


def _embedding_input(name: str, value: Any) -> None:
    if isinstance(value, str):
        return
    if not isinstance(value, list) or not value:
        raise _bad(name, "a string or a non-empty array")


def check_params(body: Mapping[str, Any], allowed: Mapping[str, Check]) -> None:
    """Refuse an unknown key, a missing `model`, or a value of the wrong kind."""
    for key in body:
        if key not in allowed:
            raise ClientError(
                400, f"Unrecognized request argument supplied: {key}", code="unknown_parameter",
                param=key,
            )  # fmt: skip
    for key, value in body.items():
        if value is not None or key in ("model", "messages", "input"):
            allowed[key](key, value)
    for required in ("model",):
        if required not in body:
            raise _bad(required, "given")


def validate_chat(body: Mapping[str, Any]) -> None:
    check_params(body, CHAT_PARAMS)
    if "messages" not in body:
        raise _bad("messages", "a non-empty array")


def validate_embeddings(body: Mapping[str, Any]) -> None:
    check_params(body, EMBEDDING_PARAMS)
    if "input" not in body:
        raise _bad("input", "a string or a non-empty array")
