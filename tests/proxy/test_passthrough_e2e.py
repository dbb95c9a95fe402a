"""The proxy end to end: the official openai client, a real server, a simulated teacher."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from proxy.sim.teacher import SimulatedTeacher
from tests.support import ANSWERS, CLIENT_KEY, LABELS, UPSTREAM_KEY, proxy_config, running_proxy

QUESTION = [{"role": "user", "content": "where is my new card"}]


_CLIENTS: list[openai.OpenAI] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    """Every client a test made is closed after it, so no pooled socket outlives it."""
    yield
    while _CLIENTS:
        _CLIENTS.pop().close()


def client(base_url: str, key: str = "unused") -> openai.OpenAI:
    made = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=10)
    _CLIENTS.append(made)
    return made


def stream_text(stream: openai.Stream) -> tuple[str, str | None]:
    parts, finish = [], None
    for chunk in stream:
        for choice in chunk.choices:
            parts.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    return "".join(parts), finish


def wait_for_rows(db: Path, query: str, n: int, timeout: float = 5.0) -> list[tuple]:
    """Writes are queued by design; poll until they land."""
    deadline = time.monotonic() + timeout
    while True:
        with sqlite3.connect(db) as conn:
            rows = conn.execute(query).fetchall()
        if len(rows) >= n or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


@pytest.mark.parametrize("model", ["teacher-model", "banking-intent"])
def test_sync_client_gets_what_the_teacher_says(teacher, proxy, model):
    _, teacher_url = teacher
    direct = client(teacher_url).chat.completions.create(model=model, messages=QUESTION)
    via = client(proxy[0]).chat.completions.create(model=model, messages=QUESTION)
    assert via.choices[0].message.content == direct.choices[0].message.content == "card_arrival"
    assert via.choices[0].finish_reason == direct.choices[0].finish_reason == "stop"
    assert via.usage is not None and via.usage.total_tokens == direct.usage.total_tokens


def test_sync_stream_matches_direct(teacher, proxy):
    _, teacher_url = teacher
    kwargs = {"model": "teacher-model", "messages": QUESTION, "stream": True}
    direct = stream_text(client(teacher_url).chat.completions.create(**kwargs))
    via = stream_text(client(proxy[0]).chat.completions.create(**kwargs))
    assert via == direct == ("card_arrival", "stop")


async def test_async_client_streamed_and_not(teacher, proxy):
    _, teacher_url = teacher
    results = {}
    for name, url in [("direct", teacher_url), ("via", proxy[0])]:
        aclient = openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0)
        plain = await aclient.chat.completions.create(model="banking-intent", messages=QUESTION)
        stream = await aclient.chat.completions.create(
            model="banking-intent", messages=QUESTION, stream=True
        )
        parts, finish = [], None
        async for chunk in stream:
            for choice in chunk.choices:
                parts.append(choice.delta.content or "")
                finish = choice.finish_reason or finish
        results[name] = (plain.choices[0].message.content, "".join(parts), finish)
        await aclient.close()
    assert results["via"] == results["direct"] == ("card_arrival", "card_arrival", "stop")


async def test_concurrent_task_requests_land_as_traces_with_their_labels(proxy):
    url, db = proxy
    aclient = openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0)
    inputs = sorted(ANSWERS)

    async def ask(text: str) -> str | None:
        reply = await aclient.chat.completions.create(
            model="banking-intent",
            messages=[
                {"role": "system", "content": "Classify the banking question."},
                {"role": "user", "content": text},
            ],
        )
        return reply.choices[0].message.content

    answers = await asyncio.gather(*(ask(t) for t in inputs))
    await aclient.close()
    assert answers == [ANSWERS[t] for t in inputs]
    query = "SELECT input, label, valid, model, latency_ms FROM traces WHERE task='banking'"
    deadline = time.monotonic() + 5
    while True:
        with sqlite3.connect(db) as conn:
            rows = [r for r in conn.execute(query).fetchall() if r[0] in ANSWERS]
        if len({r[0] for r in rows}) == len(inputs) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    stored = {r[0]: r for r in rows}
    assert set(stored) == set(inputs)
    for text, (_, label, valid, model, latency_ms) in stored.items():
        assert (label, valid, model) == (ANSWERS[text], 1, "teacher-model")
        assert latency_ms > 0
    decisions = wait_for_rows(db, "SELECT decision FROM decisions WHERE task='banking'", 1)
    assert decisions and {d[0] for d in decisions} <= {"teacher"}


def test_pass_through_requests_leave_no_trace(proxy):
    url, db = proxy
    text = "a pass-through question that is no task"
    client(url).chat.completions.create(
        model="teacher-model", messages=[{"role": "user", "content": text}]
    )
    time.sleep(0.3)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM traces WHERE input=?", (text,)).fetchone()[0] == 0


def test_answer_outside_the_label_set_is_stored_invalid(tmp_path):
    sim = SimulatedTeacher({"pay my bill": "bill_payment"}, labels=LABELS)
    db = tmp_path / "t.db"
    from proxy.sim.teacher import run_sim_teacher

    with run_sim_teacher(sim) as teacher_url, running_proxy(proxy_config(teacher_url, db)) as url:
        reply = client(url).chat.completions.create(
            model="banking-intent", messages=[{"role": "user", "content": "pay my bill"}]
        )
        assert reply.choices[0].message.content == "bill_payment"
        rows = wait_for_rows(db, "SELECT label, valid, raw_output FROM traces", 1)
    assert rows == [(None, 0, "bill_payment")]


def test_models_embeddings_and_health(proxy):
    url = proxy[0]
    ids = {m.id for m in client(url).models.list().data}
    assert ids == {"teacher-model", "banking-intent"}
    emb = client(url).embeddings.create(model="teacher-model", input=["a", "b"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 16
    assert httpx.get(url.removesuffix("/v1") + "/healthz").json()["status"] == "ok"


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b'{"model": "teacher-model"}', 400, "messages"),
        (
            b'{"model": "teacher-model", "messages": [{"role": "user", "content": 42}]}',
            400,
            "content",
        ),
        (b'{"model": "teacher-model", "messages": "hi"}', 400, "messages"),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', 400, "model"),
        (
            b'{"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}',
            404,
            "no-such-model",
        ),
        (b"[1, 2]", 400, "JSON object"),
    ],
)
def test_bad_requests_get_their_documented_status(proxy, body, status, needle):
    reply = httpx.post(f"{proxy[0]}/chat/completions", content=body, timeout=10)
    assert reply.status_code == status
    error = reply.json()["error"]
    assert needle in error["message"] and error["type"]


def test_twelve_megabyte_body_is_413(proxy):
    big = (
        b'{"model": "teacher-model", "messages": [{"role": "user", "content": "'
        + b"x" * (12 << 20)
        + b'"}]}'
    )
    reply = httpx.post(f"{proxy[0]}/chat/completions", content=big, timeout=30)
    assert reply.status_code == 413
    assert reply.json()["error"]["code"] == "request_too_large"
    # Without a Content-Length the limit still holds while reading.
    chunks = (big[i : i + 65536] for i in range(0, len(big), 65536))
    reply = httpx.post(f"{proxy[0]}/chat/completions", content=chunks, timeout=30)
    assert reply.status_code == 413


def test_client_keys_are_required_when_configured(teacher, tmp_path):
    config = proxy_config(teacher[1], tmp_path / "t.db", api_keys=[CLIENT_KEY])
    with running_proxy(config) as url:
        with pytest.raises(openai.AuthenticationError):
            client(url, key="wrong").chat.completions.create(
                model="teacher-model", messages=QUESTION
            )
        reply = httpx.post(f"{url}/chat/completions", json={"model": "x", "messages": []})
        assert reply.status_code == 401 and reply.json()["error"]["message"] == "missing API key"
        ok = client(url, key=CLIENT_KEY).chat.completions.create(
            model="teacher-model", messages=QUESTION
        )
        assert ok.choices[0].message.content == "card_arrival"
        assert httpx.get(url.removesuffix("/v1") + "/healthz").status_code == 200


def test_upstream_failures_map_to_gateway_errors_and_the_proxy_keeps_serving(teacher, tmp_path):
    flaky = SimulatedTeacher(ANSWERS, labels=LABELS)
    from proxy.sim.teacher import run_sim_teacher

    with run_sim_teacher(flaky) as flaky_url:
        config = proxy_config(flaky_url, tmp_path / "t.db", upstream_timeout_seconds=0.5)
        with running_proxy(config) as url:
            c = client(url)
            flaky.configure(error_rate=1.0, error_status=500)
            with pytest.raises(openai.APIStatusError) as failed:
                c.chat.completions.create(model="teacher-model", messages=QUESTION)
            assert failed.value.status_code == 502
            assert "500" in failed.value.message
            flaky.configure(error_rate=1.0, error_status=429)
            with pytest.raises(openai.RateLimitError):
                c.chat.completions.create(model="teacher-model", messages=QUESTION)
            flaky.configure(error_rate=0.0, latency_s=2.0)
            started = time.monotonic()
            with pytest.raises(openai.APIStatusError) as slow:
                c.chat.completions.create(model="teacher-model", messages=QUESTION)
            assert slow.value.status_code == 504
            assert time.monotonic() - started < 1.9
            with pytest.raises(openai.APIStatusError) as slow_stream:
                c.chat.completions.create(model="teacher-model", messages=QUESTION, stream=True)
            assert slow_stream.value.status_code == 504
            flaky.configure(latency_s=0.0)
            reply = c.chat.completions.create(model="banking-intent", messages=QUESTION)
            assert reply.choices[0].message.content == "card_arrival"
            metrics = httpx.get(url.removesuffix("/v1") + "/metrics").text
            assert 'tracer_upstream_errors_total{kind="status_5xx"} 1.0' in metrics
            assert 'tracer_upstream_errors_total{kind="timeout"} 2.0' in metrics
    # The upstream is gone now: a proxy pointing at it says 502, and still answers health.
    config = proxy_config(flaky_url, tmp_path / "t2.db")
    with running_proxy(config) as url, client(url) as c:
        with pytest.raises(openai.APIStatusError) as down:
            c.chat.completions.create(model="teacher-model", messages=QUESTION)
        assert down.value.status_code == 502
        assert "unreachable" in down.value.message
        assert httpx.get(url.removesuffix("/v1") + "/healthz").status_code == 200


def test_metrics_count_requests_by_task_and_decision(proxy):
    url = proxy[0]
    client(url).chat.completions.create(model="banking-intent", messages=QUESTION)
    text = httpx.get(url.removesuffix("/v1") + "/metrics").text
    for name in [
        'tracer_requests_total{decision="teacher",task="banking"}',
        'tracer_request_duration_seconds_count{task="banking"}',
        'tracer_upstream_duration_seconds_count{task="banking"}',
        "tracer_requests_in_flight",
        'tracer_traces_stored_total{task="banking",valid="true"}',
    ]:
        assert name in text, name
    assert UPSTREAM_KEY not in text


@pytest.mark.parametrize("stream", [False, True])
def test_everything_through_litellm_when_configured(teacher, tmp_path, stream):
    config = proxy_config(teacher[1], tmp_path / "t.db", upstream_client="litellm")
    with running_proxy(config) as url:
        kwargs = {"model": "banking-intent", "messages": QUESTION}
        if stream:
            assert stream_text(client(url).chat.completions.create(**kwargs, stream=True)) == (
                "card_arrival",
                "stop",
            )
        else:
            reply = client(url).chat.completions.create(**kwargs)
            assert reply.choices[0].message.content == "card_arrival"
        rows = wait_for_rows(tmp_path / "t.db", "SELECT label FROM traces", 1)
    assert rows == [("card_arrival",)]


@pytest.mark.parametrize("stream", [False, True])
def test_teacher_answers_to_a_task_say_who_answered_in_the_body(teacher, proxy, stream):
    """The teacher's bytes as sent, plus the `tracer` field a local answer carries."""
    body = {"model": "banking-intent", "messages": QUESTION, "stream": stream}
    with httpx.Client(timeout=10) as http:
        direct = http.post(f"{teacher[1]}/chat/completions", json=body)
        via = http.post(f"{proxy[0]}/chat/completions", json=body)
    assert via.status_code == 200 and via.headers["x-tracer-lane"] == "teacher"
    if not stream:
        data = via.json()
        tracer = data.pop("tracer")
        mine = direct.json()
        assert {k: v for k, v in data.items() if k not in ("id", "created", "model")} == {
            k: v for k, v in mine.items() if k not in ("id", "created", "model")
        }
    else:
        events = [line[5:].strip() for line in via.text.splitlines() if line.startswith("data:")]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        marked = [c for c in chunks if "tracer" in c]
        assert len(marked) == 1 and marked[0]["choices"][0]["finish_reason"] == "stop"
        tracer = marked[0]["tracer"]
        deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
        text = "".join(d.get("content") or "" for d in deltas)
        assert text == "card_arrival"
    assert tracer["lane"] == "teacher" and tracer["decision"] == "teacher"
    assert tracer["label"] == "card_arrival"
    official = client(proxy[0]).chat.completions.create(model="banking-intent", messages=QUESTION)
    assert (official.model_extra or {})["tracer"]["lane"] == "teacher"
