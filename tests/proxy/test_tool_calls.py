"""A client's tool schema is checked at little cost and reaches nothing outside itself."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from proxy.tool_calls import valid_arguments


def tool(parameters: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": "PlayMusic", "parameters": parameters}}


STRING_ARTIST = {"type": "object", "properties": {"artist": {"type": "string"}}}


@pytest.fixture
def listener() -> Iterator[tuple[str, list[str]]]:
    """An HTTP server on 127.0.0.1 that records every request it gets."""
    asked: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"type": "object"}')

        def log_message(self, *_: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", asked
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_schema_is_checked_as_json_schema():
    assert valid_arguments(tool(STRING_ARTIST), {"artist": "Ronnie Wood"})
    assert not valid_arguments(tool(STRING_ARTIST), {"artist": 5})
    assert valid_arguments({"type": "function", "function": {"name": "x"}}, {"any": 1})
    local = {"$defs": {"name": {"type": "string"}},
             "type": "object", "properties": {"artist": {"$ref": "#/$defs/name"}}}  # fmt: skip
    assert valid_arguments(tool(local), {"artist": "Ronnie Wood"})
    assert not valid_arguments(tool(local), {"artist": 5})


def test_a_ref_to_a_url_or_a_file_is_never_fetched(listener: tuple[str, list[str]]):
    url, asked = listener
    for ref in (f"{url}/schema.json", "file:///etc/passwd"):
        remote = {"type": "object", "properties": {"artist": {"$ref": ref}}}
        assert not valid_arguments(tool(remote), {"artist": "Ronnie Wood"})
        assert not valid_arguments(tool({"$ref": ref}), {"artist": "Ronnie Wood"})
    assert asked == []


@pytest.mark.parametrize(
    "parameters",
    [{"$ref": "#"}, {"$ref": "#/definitions/nope"}, {"$schema": 5}, {"type": "nonsense"},
     {"$dynamicRef": "#x"}, [1, 2]],
)  # fmt: skip
def test_a_schema_that_cannot_be_checked_is_satisfied_by_nothing(parameters: Any):
    assert not valid_arguments(tool(parameters), {"artist": "Ronnie Wood"})


def test_a_regular_expression_in_a_schema_is_never_run():
    """A pattern can take exponential time on the event loop (`^(.*.*.*.*.*)*Q$`), so
    none is run: even an argument that matches is not checked, and the call is
    narrowed instead."""
    for parameters in (
        {"type": "object", "properties": {"artist": {"type": "string", "pattern": "^Ron"}}},
        {"type": "object", "patternProperties": {"^art": {"type": "string"}}},
    ):
        assert not valid_arguments(tool(parameters), {"artist": "Ronnie Wood"})
