"""What a route says in its headers: any label or tool name, as a valid header value."""

from __future__ import annotations

import h11

from proxy.routing import Route
from router.tools import ToolPlan

NASTY = "lab\x00el\r\nx-evil: 1\x1b[31m\x07 caf\u00e9 \u2603"


def test_a_label_or_tool_name_with_control_characters_makes_valid_headers():
    route = Route("deferred", f"cluster 3 ({NASTY} +2)", tool=ToolPlan("narrow", NASTY))
    headers = route.headers()
    assert headers["x-tracer-narrowed-to"] and "x-tracer-reason" in headers
    for name, value in headers.items():
        raw = value.encode("latin-1")  # what goes on the wire
        assert all(b >= 0x20 and b != 0x7F for b in raw), (name, value)
        h11.Response(status_code=200, headers=[(name, raw)])  # the server's own check
