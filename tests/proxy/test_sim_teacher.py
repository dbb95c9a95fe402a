"""The simulated teacher, exercised over real HTTP with the official openai client.

Tests of the proxy trust this server to behave like OpenAI, so these tests check the wire
format as the SDK sees it, and the fault injection the proxy's tests rely on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from proxy.sim.teacher import SimulatedTeacher, embed, run_sim_teacher

ROOT = Path(__file__).resolve().parents[2]
ANSWERS = {
    "Where is my new card?": "card_arrival",
    "I was charged twice for one purchase": "duplicate_charge",
    "How do I change my PIN?": "change_pin",
}
LABELS = sorted(set(ANSWERS.values()))
SYSTEM: ChatCompletionMessageParam = {
    "role": "system",
    "content": "Classify the customer's banking question.",
}

Serve = Callable[..., tuple[SimulatedTeacher, str]]


def ask(text: str) -> list[ChatCompletionMessageParam]:
    return [SYSTEM, {"role": "user", "content": f"  {text}\n"}]  # stripped by the teacher


def admin(base_url: str) -> str:
    return base_url.removesuffix("/v1")


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Start as many teachers as a test needs; all are stopped at the end of the test."""
    with contextlib.ExitStack() as stack:

        def start(answers: dict[str, str] | None = None, **kw: Any) -> tuple[SimulatedTeacher, str]:
            kw.setdefault("labels", LABELS)
            teacher = SimulatedTeacher(ANSWERS if answers is None else answers, **kw)
            return teacher, stack.enter_context(run_sim_teacher(teacher))

        yield start


def test_sync_client_non_streamed(serve: Serve) -> None:
    _, url = serve()
    with openai.OpenAI(base_url=url, api_key="sk-test", max_retries=0) as client:
        for text, label in ANSWERS.items():
            r = client.chat.completions.create(model="gpt-4o-mini", messages=ask(text))
            assert r.choices[0].message.content == label
            assert r.choices[0].message.role == "assistant"
            assert r.choices[0].finish_reason == "stop"
        assert r.id.startswith("chatcmpl-") and r.object == "chat.completion"
        assert r.model == "gpt-4o-mini" and r.system_fingerprint
        assert r.usage is not None and r.usage.completion_tokens == 1
        assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
        # Unmapped input: a label from the set, the same one every time.
        a, b = (
            client.chat.completions.create(model="m", messages=ask("something else"))
            .choices[0]
            .message.content
            for _ in range(2)
        )
        assert a == b and a in LABELS
        r = client.chat.completions.create(model="m", messages=ask("How do I change my PIN?"), n=3)
        assert [c.message.content for c in r.choices] == ["change_pin"] * 3
        assert [c.index for c in r.choices] == [0, 1, 2]
        assert {m.id for m in client.models.list()} >= {"sim-teacher", "gpt-4o-mini", "m"}


def test_not_a_classification_answers_deterministically(serve: Serve) -> None:
    _, url = serve(answers={}, labels=None)
    with openai.OpenAI(base_url=url, api_key="k", max_retries=0) as client:
        r = client.chat.completions.create(model="m", messages=ask("Write a haiku about rain"))
    assert r.choices[0].message.content == "echo: Write a haiku about rain"
    assert SimulatedTeacher({"x": "a"}).true_label("other") == "unknown"


async def test_async_client_streamed(serve: Serve) -> None:
    _, url = serve(stream_chunk_chars=3)
    async with openai.AsyncOpenAI(base_url=url, api_key="k", max_retries=0) as client:
        stream = await client.chat.completions.create(
            model="teacher",
            messages=ask("I was charged twice for one purchase"),
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "duplicate_charge"
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert pieces[0] == "dup" and len(pieces) == math.ceil(len(text) / 3)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert all(c.object == "chat.completion.chunk" and c.model == "teacher" for c in chunks)


def test_raw_sse_framing(serve: Serve) -> None:
    _, url = serve()
    body = {"model": "m", "messages": ask("Where is my new card?"), "stream": True}
    with httpx.stream("POST", f"{url}/chat/completions", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    assert all(e.startswith("data: {") for e in events[:-2])
    assert not any('"usage"' in e for e in events[:-2])  # only with include_usage


def test_stream_chunks_are_flushed_as_produced(serve: Serve) -> None:
    _, url = serve(stream_chunk_chars=1, chunk_delay_s=0.05)
    body = {"model": "m", "messages": ask("How do I change my PIN?"), "stream": True}
    arrivals = []
    with httpx.stream("POST", f"{url}/chat/completions", json=body) as r:
        for line in r.iter_lines():
            if line.startswith("data: {") and '"content": "' in line:
                arrivals.append(time.perf_counter())
    # "change_pin" one char at a time: ten events spread over ~0.5 s, not one burst.
    assert len(arrivals) == 11 and arrivals[-1] - arrivals[1] > 0.3


def test_json_output_format(serve: Serve) -> None:
    _, url = serve(output_format="json", json_field="intent")
    with openai.OpenAI(base_url=url, api_key="k", max_retries=0) as client:
        r = client.chat.completions.create(model="m", messages=ask("Where is my new card?"))
        s = client.chat.completions.create(
            model="m", messages=ask("Where is my new card?"), stream=True
        )
        streamed = "".join(c.choices[0].delta.content or "" for c in s if c.choices)
    assert json.loads(r.choices[0].message.content or "") == {"intent": "card_arrival"}
    assert json.loads(streamed) == {"intent": "card_arrival"}


def test_noise_one_never_gives_the_true_label(serve: Serve) -> None:
    _, url = serve(noise=1.0, seed=7)
    with openai.OpenAI(base_url=url, api_key="k", max_retries=0) as client:
        got = [
            client.chat.completions.create(model="m", messages=ask("Where is my new card?"))
            .choices[0]
            .message.content
            for _ in range(20)
        ]
    assert "card_arrival" not in got and set(got) <= set(LABELS)


def test_injected_errors_raise_the_sdk_exceptions(serve: Serve) -> None:
    teacher, url = serve(error_rate=1.0, error_status=503)
    with openai.OpenAI(base_url=url, api_key="k", max_retries=0) as client:
        with pytest.raises(openai.InternalServerError) as exc:
            client.chat.completions.create(model="m", messages=ask("Where is my new card?"))
        assert exc.value.status_code == 503
        teacher.configure(error_status=429)
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="m", messages=ask("Where is my new card?"))
    r = httpx.post(f"{url}/chat/completions", json={"model": "m", "messages": ask("x")})
    assert r.status_code == 429
    assert set(r.json()["error"]) == {"message", "type", "code"}
    assert teacher.stats()["errors_injected"] == 3
    teacher.configure(error_rate=0.0)
    assert httpx.post(f"{url}/chat/completions", json={"messages": ask("x")}).status_code == 200


def test_bad_json_is_a_400_in_openai_shape(serve: Serve) -> None:
    _, url = serve()
    r = httpx.post(f"{url}/chat/completions", content=b"{not json", timeout=5)
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    for bad in ({"model": "m"}, {"messages": ask("x"), "n": "two"}, [1, 2]):
        assert httpx.post(f"{url}/chat/completions", json=bad).status_code == 400
    assert httpx.post(f"{url}/embeddings", json={"input": []}).status_code == 400


async def test_latency_is_concurrent(serve: Serve) -> None:
    _, url = serve(latency_s=0.2)
    async with openai.AsyncOpenAI(base_url=url, api_key="k", max_retries=0) as client:
        start = time.perf_counter()
        results = await asyncio.gather(
            *(
                client.chat.completions.create(model="m", messages=ask("How do I change my PIN?"))
                for _ in range(32)
            )
        )
        elapsed = time.perf_counter() - start
    assert all(r.choices[0].message.content == "change_pin" for r in results)
    assert 0.2 <= elapsed < 1.0


def test_relabel_and_override_via_admin_route(serve: Serve) -> None:
    _, url = serve()
    with openai.OpenAI(base_url=url, api_key="k", max_retries=0) as client:

        def label(text: str) -> str | None:
            r = client.chat.completions.create(model="m", messages=ask(text))
            return r.choices[0].message.content

        assert label("Where is my new card?") == "card_arrival"
        drift = {"relabel": {"card_arrival": "card_delivery_estimate"}}
        assert httpx.post(f"{admin(url)}/_sim/config", json=drift).status_code == 200
        assert label("Where is my new card?") == "card_delivery_estimate"
        override = {"answers_override": {"How do I change my PIN?": "pin_reset"}}
        assert httpx.post(f"{admin(url)}/_sim/config", json=override).status_code == 200
        assert label("How do I change my PIN?") == "pin_reset"
    assert httpx.post(f"{admin(url)}/_sim/config", json={"bogus": 1}).status_code == 400


def test_require_key_and_stats_record_authorization(serve: Serve) -> None:
    teacher, url = serve(require_key="sk-upstream")
    with openai.OpenAI(base_url=url, api_key="sk-wrong", max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError) as exc:
            client.chat.completions.create(model="m", messages=ask("Where is my new card?"))
        assert exc.value.status_code == 401
    with openai.OpenAI(base_url=url, api_key="sk-upstream", max_retries=0) as client:
        r = client.chat.completions.create(model="m", messages=ask("Where is my new card?"))
        assert r.choices[0].message.content == "card_arrival"
    stats = httpx.get(f"{admin(url)}/_sim/stats").json()
    assert stats["auth_headers"] == ["Bearer sk-wrong", "Bearer sk-upstream"]
    assert stats["requests"] == 2 and stats["by_path"] == {"/v1/chat/completions": 2}
    assert stats == teacher.stats()


def test_embeddings(serve: Serve) -> None:
    _, url = serve()
    with openai.OpenAI(base_url=url, api_key="k", max_retries=0) as client:
        one = client.embeddings.create(model="emb", input="hello world")
        many = client.embeddings.create(model="emb", input=["hello world", "bye"])
        as_float = client.embeddings.create(model="emb", input="bye", encoding_format="float")
    assert len(one.data) == 1 and len(many.data) == 2 and [d.index for d in many.data] == [0, 1]
    for d in [*one.data, *many.data]:
        assert len(d.embedding) == 16
        assert math.isclose(sum(v * v for v in d.embedding), 1.0, rel_tol=1e-5)
    assert one.data[0].embedding == pytest.approx(many.data[0].embedding)
    assert as_float.data[0].embedding == pytest.approx(embed("bye"))
    assert one.data[0].embedding != pytest.approx(many.data[1].embedding)
    assert many.usage.prompt_tokens == 3 and many.model == "emb"


def test_runs_repeatedly_and_leaves_no_thread() -> None:
    before = set(threading.enumerate())  # other suites may keep a shared teacher running
    urls = []
    for _ in range(3):
        with run_sim_teacher(SimulatedTeacher(ANSWERS)) as url:
            assert httpx.get(f"{url}/models").status_code == 200
            urls.append(url)
    assert set(threading.enumerate()) <= before
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{urls[-1]}/models", timeout=2)


def test_tracer_sim_teacher_serves_a_traces_file(tmp_path: Path) -> None:
    traces = tmp_path / "traces.jsonl"
    rows = [{"input": k, "label": v} for k, v in ANSWERS.items()]
    traces.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cmd = [
        sys.executable,
        "-m",
        "proxy.cli",
        "sim-teacher",
        "--data",
        str(traces),
        "--format",
        "json",
    ]
    with subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], 15)
            assert ready, "the CLI printed no URL"
            url = proc.stdout.readline().strip()
            assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
            with openai.OpenAI(base_url=url, api_key="k", max_retries=0) as client:
                r = client.chat.completions.create(model="m", messages=ask("Where is my new card?"))
            assert json.loads(r.choices[0].message.content or "") == {"label": "card_arrival"}
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
