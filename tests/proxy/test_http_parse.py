"""Request bodies: nesting and lone surrogates are refused, checked without a Python walk."""

from __future__ import annotations

import json

import pytest

from proxy import http
from proxy.http import ClientError


def _nested(levels: int, inner: bytes = b"") -> bytes:
    return b'{"model": "m", "x": ' + b"[" * (levels - 1) + inner + b"]" * (levels - 1) + b"}"


def test_nesting_is_counted_outside_strings() -> None:
    http.parse_json_object(_nested(http.MAX_DEPTH))
    with pytest.raises(ClientError, match="nested deeper than 64"):
        http.parse_json_object(_nested(http.MAX_DEPTH + 1))
    brackets_in_text = json.dumps({"s": '[{\\"' * 200, "t": "]]\\" * 300}).encode()
    assert http.parse_json_object(brackets_in_text)["s"].startswith("[{")


def test_only_a_body_with_a_lone_surrogate_is_walked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Many containers, escaped emoji (valid surrogate pairs): no walk of the document."""

    def no_walk(body: object) -> None:
        raise AssertionError("walked")

    monkeypatch.setattr(http, "_walk", no_walk)
    many = {"model": "m", "messages": [{"role": "user", "content": "hi \U0001f600"}] * 500}
    many["x"] = [[]] * 20_000
    assert http.parse_json_object(json.dumps(many).encode())["x"] == [[]] * 20_000
    monkeypatch.undo()
    lone = b'{"model": "m", "messages": [{"role": "user", "content": "a\\udfff"}]}'
    with pytest.raises(ClientError, match=r"`messages\[0\]\.content` holds a lone"):
        http.parse_json_object(lone)
