"""A seeded mutation fuzz of request bodies: no input gets a 5xx, and the server lives on.

2,400 mutations of valid bodies (values swapped for hostile ones, keys dropped or
added, bytes truncated or flipped, nesting deepened) go to the chat, classify and
embeddings routes of a real proxy over one keep-alive client. Every answer must be
below 500, every error must be in OpenAI's shape, and afterwards a valid request must
still be answered.
"""

from __future__ import annotations

import json
import random
from typing import Any

import httpx

N_BODIES = 2400
SEED = 20261130

USER = [{"role": "system", "content": "classify"}, {"role": "user", "content": "i lost my card"}]
VALID: list[tuple[str, dict[str, Any]]] = [
    ("/chat/completions", {"model": "banking-intent", "messages": USER}),
    ("/chat/completions", {"model": "banking-intent", "messages": USER, "stream": True}),
    ("/chat/completions", {"model": "teacher-model", "messages": USER, "temperature": 0.2}),
    (
        "/chat/completions",
        {"model": "banking-intent", "messages": USER, "stream": True,
         "stream_options": {"include_usage": True}, "n": 1, "max_tokens": 5},
    ),
    ("/classify", {"task": "banking", "input": "where is my new card"}),
    ("/embeddings", {"model": "teacher-model", "input": ["a", "b"]}),
]  # fmt: skip

HOSTILE: list[Any] = [
    None, True, False, 0, -1, 2**63, -(2**63) - 1, 1e308, -1e-308, 0.5, "", " ", "x" * 5000,
    "\ud800", "a\udfffb", "\x00", "🙂", "\u202e", [], {}, [None], [[[]]], {"a": {"b": []}},
    ["user"], {"role": "user"}, "NaN", "system", "tool", 3.7, [1, 2, 3], {"type": "text"},
]  # fmt: skip
KEYS = [
    "model", "messages", "stream", "stream_options", "n", "temperature", "top_p", "tools",
    "tool_choice", "response_format", "logprobs", "stop", "seed", "user", "input", "task",
    "api_base", "base_url", "mock_response", "timeout", "role", "content", "max_tokens",
    "functions", "metadata", "logit_bias", "x-unknown",
]  # fmt: skip


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            out += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            out += _paths(child, (*prefix, i))
    return out


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value
    return doc


def _mutate_value(rng: random.Random, body: dict[str, Any]) -> Any:
    doc = json.loads(json.dumps(body))
    for _ in range(rng.randint(1, 3)):
        paths = _paths(doc)
        path = rng.choice(paths)
        roll = rng.random()
        if roll < 0.5:
            doc = _set(doc, path, rng.choice(HOSTILE))
        elif roll < 0.7 and path and isinstance(doc, dict):
            parent = doc
            for step in path[:-1]:
                parent = parent[step]
            if isinstance(parent, dict):
                parent.pop(path[-1], None)
            elif isinstance(parent, list) and parent:
                parent.pop()
        elif isinstance(doc, dict):
            doc[rng.choice(KEYS)] = rng.choice(HOSTILE)
    return doc


def _mutate_bytes(rng: random.Random, raw: bytes) -> bytes:
    roll = rng.random()
    if roll < 0.25:
        return raw[: rng.randrange(len(raw) + 1)]
    if roll < 0.5:
        i = rng.randrange(len(raw))
        return raw[:i] + bytes([rng.randrange(256)]) + raw[i + 1 :]
    if roll < 0.65:
        depth = rng.choice([50, 70, 1000, 100_000])
        return raw.replace(b'"messages": ', b'"messages": ' + b"[" * depth, 1) + b"]" * depth
    if roll < 0.8:
        digits = rng.choice([20, 4300, 5000])
        return raw.replace(b"}", b', "n": ' + b"7" * digits + b"}", 1)
    if roll < 0.9:
        return raw.replace(
            b"}", rng.choice([b', "temperature": NaN}', b', "top_p": -Infinity}']), 1
        )
    return raw + rng.choice([b"garbage", b"\xff\xfe", b"}", b"\x00", b" "])


def bodies() -> list[tuple[str, bytes]]:
    rng = random.Random(SEED)
    out = []
    for _ in range(N_BODIES):
        path, valid = rng.choice(VALID)
        if rng.random() < 0.6:
            raw = json.dumps(_mutate_value(rng, valid)).encode()
        else:
            raw = _mutate_bytes(rng, json.dumps(valid).encode())
        out.append((path, raw))
    return out


def test_no_mutated_body_gets_a_5xx_and_the_server_lives_on(proxy):
    base, _ = proxy
    statuses: dict[int, int] = {}
    with httpx.Client(timeout=30, headers={"content-type": "application/json"}) as client:
        for path, raw in bodies():
            with client.stream("POST", f"{base}{path}", content=raw) as r:
                body = r.read()
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            assert r.status_code < 500, (path, raw[:300], body[:300])
            if r.status_code >= 400:
                error = json.loads(body)["error"]
                assert isinstance(error["message"], str) and error["type"], body[:300]
        assert sum(statuses.values()) == N_BODIES
        assert statuses.get(200, 0) > 100 and statuses.get(400, 0) > 1000, statuses
        ok = client.post(f"{base}/chat/completions", json=VALID[0][1])
        assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"]
        assert client.get(f"{base.removesuffix('/v1')}/healthz").json()["status"] == "ok"
