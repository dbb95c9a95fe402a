"""Reading logs an operator already has, one record a line, for `tracer traces import`.

Three shapes, told apart by the file's first object (or named with `--format`):

- ``traces``: the trace contract (`router.traces`): ``{"input", "label"}`` and optional
  ``raw_output``, ``source``, ``task``, ``created_at``, ``cost_usd``, token counts;
- ``openai``: a chat request and its response. A line of OpenAI's Batch API output
  (``custom_id``, ``response: {status_code, body}``, ``error``) is joined on
  ``custom_id`` with the batch input file (``custom_id``, ``url``, ``body``: the request)
  given apart; a line may also carry its request itself, as ``body`` (a batch input line
  with its output merged in) or ``request`` (any log of request and response pairs);
- ``litellm``: LiteLLM's `StandardLoggingPayload` (its ``messages`` and ``response``,
  ``model_group`` or ``model``, ``status``, ``response_cost``, ``startTime``), as its
  logging callbacks write it, bare or under ``standard_logging_object``.

A reader only takes each line apart: it says what was asked, what came back and when,
or why the line cannot be used. Whether a record belongs to a task, and what its input
and label are, is decided by the task's own rules in `proxy.traces_import`, exactly as
for a live request.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

Format = Literal["traces", "openai", "litellm"]
FORMATS: tuple[Format, ...] = ("traces", "openai", "litellm")
CHAT_CALLS = ("completion", "acompletion")  # LiteLLM call types of a chat completion


class LogFormatError(ValueError):
    """A whole file cannot be read as the format asked (or as any format)."""


@dataclass(frozen=True)
class LogRecord:
    """One line: a chat exchange (`body`, `completion`) or a trace line (`trace`).

    `invalid` says why the line cannot be used at all; `failure` says why its call gave
    no answer (a record whose request belongs to another task is still only "not
    matched"); `other` says why it is no chat request (an embeddings call, say).
    """

    line: int
    body: dict[str, Any] | None = None
    completion: dict[str, Any] | None = None
    trace: dict[str, Any] | None = None
    invalid: str | None = None
    failure: str | None = None
    other: str | None = None
    cost_usd: float | None = None
    latency_ms: float | None = None
    created_at: datetime | None = None


def _number(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if ok and math.isfinite(value) else None


def _epoch(value: Any) -> datetime | None:
    seconds = _number(value)
    if seconds is None or not 0 < seconds < 32_503_680_000:  # before the year 3000
        return None
    return datetime.fromtimestamp(seconds, UTC)


def _iso(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return _epoch(value)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _objects(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """(line number, object, why not) for each non-blank line."""
    with path.open(encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except (ValueError, RecursionError) as exc:
                yield number, None, f"not JSON: {exc}"
                continue
            if not isinstance(obj, dict):
                yield number, None, "not a JSON object"
                continue
            yield number, obj, None


def detect(obj: Mapping[str, Any]) -> Format | None:
    """The format of a file whose first object is `obj`; None when it fits none."""
    if "input" in obj and "label" in obj:
        return "traces"
    if "custom_id" in obj or ("request" in obj and "response" in obj):
        return "openai"
    payload = obj.get("standard_logging_object", obj)
    if isinstance(payload, dict) and "messages" in payload and "response" in payload:
        return "litellm"
    return None


def detect_file(path: Path) -> Format:
    for _, obj, _ in _objects(path):
        if obj is not None:
            found = detect(obj)
            if found is None:
                keys = ", ".join(sorted(obj)[:8])
                raise LogFormatError(
                    f"{path}: cannot tell its format from its first object (keys: {keys}); "
                    f"give --format ({', '.join(FORMATS)})"
                )
            return found
    raise LogFormatError(f"{path}: no JSON object in it")


# -- traces ---------------------------------------------------------------------------------
def _trace(number: int, obj: dict[str, Any]) -> LogRecord:
    for key in ("input", "label"):
        if not isinstance(obj.get(key), str):
            return LogRecord(number, invalid=f"`{key}` is missing or not a string")
    for key in ("raw_output", "task", "source"):
        if obj.get(key) is not None and not isinstance(obj[key], str):
            return LogRecord(number, invalid=f"`{key}` is not a string")
    return LogRecord(
        number,
        trace=obj,
        cost_usd=_number(obj.get("cost_usd")),
        latency_ms=_number(obj.get("latency_ms")),
        created_at=_iso(obj.get("created_at")),
    )


# -- OpenAI -------------------------------------------------------------------------------------
Requests = dict[str, tuple[dict[str, Any] | None, str | None]]  # custom_id -> (body, url)


def read_requests(path: Path) -> Requests:
    """A batch input file: custom_id -> (request body, url); a repeated id maps to None."""
    out: Requests = {}
    for _, obj, _ in _objects(path):
        if obj is None or not isinstance(obj.get("custom_id"), str):
            continue
        body = obj.get("body")
        entry = (body if isinstance(body, dict) else None, obj.get("url"))
        out[obj["custom_id"]] = (None, "repeated") if obj["custom_id"] in out else entry
    if not out:
        raise LogFormatError(f"{path}: no line with a `custom_id` (a Batch API input file?)")
    return out


def _openai_request(
    obj: dict[str, Any], requests: Requests | None
) -> tuple[dict[str, Any] | None, str | None, str | None]:
    """(request body, url, why there is none)."""
    request = obj.get("request")
    if isinstance(request, dict):
        return request, obj.get("url"), None
    body = obj.get("body")
    if isinstance(body, dict) and "messages" in body:
        return body, obj.get("url"), None
    custom_id = obj.get("custom_id")
    if requests is None:
        return None, None, "no request on the line (give the batch input file with --requests)"
    if not isinstance(custom_id, str) or custom_id not in requests:
        return None, None, f"no request with custom_id {custom_id!r} in the --requests file"
    found, url = requests[custom_id]
    if found is None:
        why = "appears twice" if url == "repeated" else "has no request body"
        return None, None, f"custom_id {custom_id!r} {why} in the --requests file"
    return found, url, None


def _openai(number: int, obj: dict[str, Any], requests: Requests | None) -> LogRecord:
    body, url, missing = _openai_request(obj, requests)
    error = obj.get("error")
    if body is None:  # a failed call's own error says more than its missing request
        failed = isinstance(error, dict) and (error.get("message") or error.get("code"))
        return LogRecord(number, invalid=f"the call failed: {failed}" if failed else missing)
    if isinstance(url, str) and not url.rstrip("/").endswith("chat/completions"):
        return LogRecord(number, body=body, other=f"not a chat completion (url {url})")
    response = obj.get("response")
    completion: dict[str, Any] | None = None
    failure: str | None = None
    if isinstance(error, dict) and error:
        failure = f"the call failed: {error.get('message') or error.get('code')}"
    elif isinstance(response, dict) and ("status_code" in response or "choices" not in response):
        status, inner = response.get("status_code"), response.get("body")
        if status not in (None, 200):
            message = inner.get("error", {}).get("message") if isinstance(inner, dict) else None
            failure = f"the call failed with status {status}" + (f": {message}" if message else "")
        elif not isinstance(inner, dict):
            failure = "the response has no body"
        else:
            completion = inner
    elif isinstance(response, dict):
        completion = response
    elif "body" in obj:
        failure = "no response (a Batch API input file? import its output, with --requests INPUT)"
    else:
        failure = "no response"
    created = _epoch(completion.get("created")) if completion is not None else None
    return LogRecord(number, body=body, completion=completion, failure=failure, created_at=created)


# -- LiteLLM ------------------------------------------------------------------------------------
def _litellm(number: int, obj: dict[str, Any]) -> LogRecord:
    payload = obj.get("standard_logging_object", obj)
    if not isinstance(payload, dict):
        return LogRecord(number, invalid="`standard_logging_object` is not an object")
    messages = payload.get("messages")
    if not isinstance(messages, list):
        why = "`messages` is not a list of messages (redacted by LiteLLM's logging settings?)"
        return LogRecord(number, invalid=why)
    model = payload.get("model_group") or payload.get("model")
    body: dict[str, Any] = {"model": model, "messages": messages}
    params = payload.get("model_parameters")
    if isinstance(params, dict):
        body.update({k: params[k] for k in ("tools", "tool_choice") if params.get(k) is not None})
    start, end = _number(payload.get("startTime")), _number(payload.get("endTime"))
    record = LogRecord(
        number,
        body=body,
        cost_usd=_number(payload.get("response_cost")),
        latency_ms=(end - start) * 1000.0 if start is not None and end is not None else None,
        created_at=_epoch(start),
    )
    call_type = payload.get("call_type")
    if isinstance(call_type, str) and call_type not in CHAT_CALLS:
        return replace(record, other=f"not a chat completion (call_type {call_type})")
    status, response = payload.get("status"), payload.get("response")
    if status not in (None, "success"):
        return replace(record, failure=f"the call failed: {payload.get('error_str') or status}")
    if not isinstance(response, dict):
        return replace(record, failure="no response (redacted by LiteLLM's logging settings?)")
    return replace(record, completion=response)


def read_records(
    path: Path, fmt: Format | None = None, requests: Path | None = None
) -> tuple[Format, Iterator[LogRecord]]:
    """The file's format and its records, one for each non-blank line, in order."""
    fmt = fmt or detect_file(path)
    if requests is not None and fmt != "openai":
        raise LogFormatError("--requests goes with OpenAI Batch API output files")
    joined = read_requests(requests) if requests is not None else None

    def records() -> Iterator[LogRecord]:
        for number, obj, why in _objects(path):
            if obj is None:
                yield LogRecord(number, invalid=why)
            elif fmt == "traces":
                yield _trace(number, obj)
            elif fmt == "openai":
                yield _openai(number, obj, joined)
            else:
                yield _litellm(number, obj)

    return fmt, records()
