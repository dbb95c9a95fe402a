"""Upstream failures, already mapped to what the client is told."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.responses import JSONResponse

# Headers of an upstream error that tell a client when to retry; passed on as they are.
PASSED_ON = ("retry-after", "retry-after-ms")
PASSED_ON_PREFIX = "x-ratelimit-"


def passed_on(headers: Mapping[str, str] | None) -> dict[str, str]:
    """The rate-limit headers of an upstream answer, for the client's own back-off."""
    if not headers:
        return {}
    return {
        k.lower(): v
        for k, v in headers.items()
        if k.lower() in PASSED_ON or k.lower().startswith(PASSED_ON_PREFIX)
    }


class ErrorResponse(JSONResponse):
    """An error body that always renders: it may quote what a client sent (a field name,
    a model), and a lone surrogate there cannot be encoded as UTF-8, so all but ASCII is
    escaped."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def error_body(
    message: str, error_type: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """OpenAI's error shape, the one every error the proxy returns takes."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


@dataclass(eq=False)
class UpstreamError(Exception):
    """A failed upstream call: the status and OpenAI error fields the client gets."""

    status: int
    kind: str  # timeout | unreachable | status_4xx | status_5xx | invalid | other
    message: str
    error_type: str
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.error_type, self.code)

    def response(self) -> JSONResponse:
        return ErrorResponse(self.body(), status_code=self.status, headers=self.headers)
