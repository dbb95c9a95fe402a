"""A hostile client and a broken upstream, against a real proxy on loopback.

No client may steer the upstream call or write training data; every client error is a
4xx in OpenAI's shape on a connection that stays usable; a broken upstream answer is
a 502 and never a trace.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from proxy.config import ConfigError, parse_config
from proxy.sim.teacher import SimulatedTeacher, run_sim_teacher
from tests.support import ANSWERS, CLIENT_KEY, LABELS, proxy_config, running_proxy

TASK_BODY = {
    "model": "banking-intent",
    "messages": [{"role": "user", "content": "i lost my card yesterday"}],
}


def rows(db: Path, table: str = "traces") -> int:
    """Rows in a table once the writer had time to flush (it lingers 50 ms)."""
    time.sleep(0.3)
    with sqlite3.connect(db) as conn:
        return int(conn.execute(f"select count(*) from {table}").fetchone()[0])


@pytest.fixture()
def fresh(tmp_path: Path) -> Iterator[tuple[SimulatedTeacher, str, Path]]:
    """A teacher of this test's own (its counts and faults are the test's), and a store."""
    sim = SimulatedTeacher(ANSWERS, labels=LABELS)
    with run_sim_teacher(sim) as url:
        yield sim, url, tmp_path / "tracer.db"


@pytest.mark.parametrize("upstream_client", ["auto", "litellm"])
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("api_base", "http://127.0.0.1:9/v1"),
        ("base_url", "http://127.0.0.1:9/v1"),
        ("mock_response", "lost_or_stolen_card"),
        ("timeout", 0.001),
        ("api_key", "sk-client-chosen"),
        ("num_retries", 5),
        ("extra_headers", {"Authorization": "Bearer x"}),
    ],
)
def test_litellm_control_arguments_are_refused(fresh, upstream_client, field, value):
    """Neither upstream path lets a body redirect the call, forge an answer or set limits."""
    sim, url, db = fresh
    config = proxy_config(url, db, upstream_client=upstream_client)
    with running_proxy(config) as base:
        for model in ("banking-intent", "teacher-model"):
            body = {**TASK_BODY, "model": model, field: value}
            r = httpx.post(f"{base}/chat/completions", json=body)
            assert r.status_code == 400, r.text
            error = r.json()["error"]
            assert error["param"] == field and field in error["message"]
        embed = httpx.post(
            f"{base}/embeddings", json={"model": "teacher-model", "input": "x", field: value}
        )
        assert embed.status_code == 400 and embed.json()["error"]["param"] == field
        assert sim.stats()["requests"] == 0
        assert rows(db) == 0


def test_an_empty_or_blank_client_key_is_refused_at_start():
    model = {"model_name": "m", "litellm_params": {"model": "openai/m"}}
    for key in ["", "   "]:
        raw = {"model_list": [model], "server": {"host": "0.0.0.0", "api_keys": ["os.environ/CK"]}}
        with pytest.raises(ConfigError, match=r"api_keys\[0\] is empty or blank"):
            parse_config(raw, env={"CK": key})


def raw_http(base: str, request: bytes) -> bytes:
    """Send bytes as they are (httpx refuses malformed headers) and read the reply."""
    host, port = base.removeprefix("http://").removesuffix("/v1").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        return sock.recv(65536)


def test_an_empty_bearer_token_is_not_a_key(fresh):
    _, url, db = fresh
    with running_proxy(proxy_config(url, db, api_keys=[CLIENT_KEY])) as base:
        for auth in [b"Bearer ", b"Bearer", b"Bearer  ", b""]:
            reply = raw_http(
                base, b"GET /v1/models HTTP/1.1\r\nhost: x\r\nauthorization: " + auth + b"\r\n\r\n"
            )
            assert reply.startswith(b"HTTP/1.1 401"), auth


def test_a_refused_request_that_expects_100_continue_is_not_invited_to_send_its_body(fresh):
    """A client that waits for `100 Continue` gets the final answer instead: a wrong key
    or a body over the limit is refused before a byte of the body is sent."""
    _, url, db = fresh
    with running_proxy(proxy_config(url, db, api_keys=[CLIENT_KEY])) as base:
        for auth, length in [(b"Bearer wrong", b"1000"), (b"Bearer " + CLIENT_KEY.encode(),
                                                          b"104857600")]:  # fmt: skip
            reply = raw_http(
                base,
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: " + auth
                + b"\r\ncontent-type: application/json\r\ncontent-length: " + length
                + b"\r\nexpect: 100-continue\r\n\r\n",
            )  # fmt: skip
            status = reply.split(b"\r\n", 1)[0]
            assert status in (
                b"HTTP/1.1 401 Unauthorized",
                b"HTTP/1.1 413 Request Entity Too Large",
            ), reply[:200]


def _body(**fields: object) -> bytes:
    user = [{"role": "user", "content": "hi"}]
    return json.dumps({"model": "banking-intent", "messages": user, **fields}).encode()


RAW_SURROGATE = (
    b'{"model": "banking-intent", "messages": [{"role": "user", "content": "a\xed\xa0\x80b"}]}'
)
TOO_LARGE = b'{"model": "banking-intent", "messages": [], "temperature": 1e999}'
HIDDEN_INFINITY = b'{"model": "banking-intent", "messages": [], "metadata": {"x": -1e400}}'


def _bad_bodies() -> list[tuple[str, bytes, str]]:
    deep = b'{"model": "banking-intent", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    big_int = b'{"model": "banking-intent", "messages": [], "n": ' + b"9" * 5000 + b"}"
    task_input = (
        b'{"model": "banking-intent", "messages": [{"role": "user", "content": "a\\ud800b"}]}'
    )
    return [
        ("deep nesting", deep, "nested"),
        ("5,000-digit integer", big_int, "not valid JSON"),
        ("role as a list", _body(messages=[{"role": ["user"]}]), "role"),
        ("role as an object", _body(messages=[{"role": {}}]), "role"),
        ("surrogate in the task input", task_input, "messages[0].content"),
        ("surrogate in the model", b'{"model": "x\\udfff", "messages": []}', "model"),
        ("temperature as text", _body(temperature="hot"), "temperature"),
        (
            "temperature NaN",
            b'{"model": "m", "messages": [], "temperature": NaN}',
            "not valid JSON",
        ),
        ("stream_options as text", _body(stream_options="x"), "stream_options"),
        ("stream as text", _body(stream="yes"), "stream"),
        ("n as a boolean", _body(n=True), "`n`"),
        ("not UTF-8", b'{"model": "\xff\xfe"}', "not valid JSON"),
        ("surrogate as raw bytes", RAW_SURROGATE, "not valid JSON"),
        ("surrogate in a key", _body(metadata={"\ud800": 1}), "surrogate"),
        ("surrogate in an unknown key", _body(**{"\ud800": 1}), "surrogate"),
        ("a number too large for a float", TOO_LARGE, "too large"),
        ("infinity hidden in metadata", HIDDEN_INFINITY, "too large"),
    ]


@pytest.mark.parametrize(
    ("case", "raw", "needle"), _bad_bodies(), ids=lambda x: x if isinstance(x, str) else ""
)
def test_client_errors_are_400s_in_openai_shape_on_a_live_connection(proxy, case, raw, needle):
    base, _ = proxy
    with httpx.Client(timeout=30) as client:
        r = client.post(
            f"{base}/chat/completions", content=raw, headers={"content-type": "application/json"}
        )
        assert r.status_code == 400, (case, r.text)
        assert needle in r.json()["error"]["message"], r.json()
        assert r.headers.get("connection") != "close"
        assert client.get(f"{base.removesuffix('/v1')}/healthz").status_code == 200


def test_unknown_routes_and_methods_answer_in_openai_shape(proxy):
    base, _ = proxy
    root = base.removesuffix("/v1")
    for method, path, status in [
        ("GET", "/v1/responses", 404),
        ("POST", "/v1/completions", 404),
        ("GET", "/v1/chat/completions", 405),
        ("DELETE", "/v1/models", 405),
    ]:
        r = httpx.request(method, f"{root}{path}")
        assert r.status_code == status, path
        assert r.headers["content-type"] == "application/json"
        assert isinstance(r.json()["error"]["message"], str)


def test_the_servers_own_400_is_json(proxy):
    base, _ = proxy
    host, port = base.removeprefix("http://").removesuffix("/v1").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"GARBAGE / HTTP/1.1\r\n\x00\x01\r\n\r\n")
        reply = sock.recv(4096)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"application/json" in head
    assert json.loads(body)["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("fault", ["non_json", "truncated", "no_choices"])
def test_a_broken_upstream_answer_is_a_502_and_never_a_trace(fresh, fault):
    sim, url, db = fresh
    sim.configure(fault=fault)
    with running_proxy(proxy_config(url, db)) as base:
        for model in ("banking-intent", "teacher-model"):
            r = httpx.post(f"{base}/chat/completions", json={**TASK_BODY, "model": model})
            assert r.status_code == 502, r.text
            assert r.json()["error"]["type"] == "upstream_error"
        r = httpx.post(f"{base}/classify", json={"task": "banking", "input": "i lost my card"})
        assert r.status_code == 502
        assert rows(db) == 0


@pytest.mark.parametrize("fault", ["stream_cut", "stream_no_done", "error_event"])
def test_an_unfinished_stream_ends_in_an_error_event_and_never_a_trace(fresh, fault):
    sim, url, db = fresh
    sim.configure(fault=fault)
    with running_proxy(proxy_config(url, db)) as base:
        body = {**TASK_BODY, "stream": True}
        with httpx.stream("POST", f"{base}/chat/completions", json=body) as r:
            events = [line[5:].strip() for line in r.iter_lines() if line.startswith("data:")]
        if r.status_code == 502:  # the failure came with the first bytes: a status says it
            assert rows(db) == 0
            return
        assert r.status_code == 200  # committed with the first bytes
        assert "error" in json.loads(events[-1]), events
        assert "[DONE]" not in events
        assert rows(db) == 0


def test_classify_refuses_an_answer_outside_the_label_set(fresh):
    sim, url, db = fresh
    sim.configure(answers_override={"odd input": "not_a_label"})
    with running_proxy(proxy_config(url, db)) as base:
        r = httpx.post(f"{base}/classify", json={"task": "banking", "input": "odd input"})
        assert r.status_code == 502 and "not a valid label" in r.json()["error"]["message"]


def test_a_429_passes_on_its_retry_headers(fresh):
    sim, url, db = fresh
    sim.configure(error_rate=1.0, error_status=429)
    for client in ("auto", "litellm"):
        with running_proxy(proxy_config(url, db, upstream_client=client)) as base:
            r = httpx.post(f"{base}/chat/completions", json=TASK_BODY)
            assert r.status_code == 429, (client, r.text)
            assert r.headers["retry-after"] == "7", client
            assert r.headers["x-ratelimit-remaining-requests"] == "0", client


def test_a_body_shorter_than_its_length_times_out(fresh):
    _, url, db = fresh
    with running_proxy(proxy_config(url, db, read_timeout_seconds=0.5)) as base:
        host, port = base.removeprefix("http://").removesuffix("/v1").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                b'content-type: application/json\r\ncontent-length: 1000\r\n\r\n{"model"'
            )
            reply = sock.recv(4096)
        assert reply.startswith(b"HTTP/1.1 408"), reply
        # Half-sent headers: the connection is closed, not held forever.
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")
            started = time.monotonic()
            assert sock.recv(4096) == b""
            assert time.monotonic() - started < 5


def test_a_client_that_hangs_up_mid_upload_is_one_log_line(fresh, caplog):
    _, url, db = fresh
    with running_proxy(proxy_config(url, db)) as base:
        host, port = base.removeprefix("http://").removesuffix("/v1").split(":")
        with caplog.at_level("INFO", logger="tracer.http"):
            for _ in range(3):
                with socket.create_connection((host, int(port)), timeout=10) as sock:
                    sock.sendall(
                        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                        b'content-length: 1000\r\n\r\n{"mo'
                    )
            time.sleep(0.5)
    gone = [r for r in caplog.records if "disconnected before its request body" in r.message]
    assert len(gone) == 3
    assert not any(r.exc_info for r in caplog.records)
    assert "Traceback" not in caplog.text
