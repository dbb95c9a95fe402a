"""Tool calls through a real proxy: an agent's steps answered whole, narrowed, or taught.

A simulated teacher answers an agent's requests (which carry `tools`) from a table. The
proxy learns the task from its traces, then answers whole calls locally (the official
openai client parses them, sync and async, streamed or not), narrows a request whose
arguments fail the client's schema, and answers /v1/classify with the tool's name.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from proxy.sim.synthetic import REPLY, TOOL_SCHEMAS, make_tool_steps
from proxy.sim.teacher import SimulatedTeacher, run_sim_teacher
from tests.support import intents_config, running_proxy

STEPS = make_tool_steps(1500, seed=8)
TEXTS = list(STEPS)


def tools_config(teacher_url: str, tmp: Path) -> Any:
    """A tool task taught by `teacher`, narrowed to `small` (the same simulated server)."""

    def model(name: str) -> dict[str, Any]:
        params = {"model": f"openai/{name}", "api_key": "k", "api_base": teacher_url}
        return {"model_name": name, "litellm_params": params}

    return intents_config(
        teacher_url,
        tmp,
        task={"kind": "tools", "labels": None, "target": 0.9, "confidence": 0.9,
              "min_coverage": 0.05, "narrow_to": "small"},
        refit={"min_new_traces": 1000, "interval_seconds": 3600},
        model_list=[model("teacher"), model("small")],
    )  # fmt: skip


def ask(text: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You are a home assistant."},
        {"role": "user", "content": text},
    ]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, SimulatedTeacher]]:
    tmp = tmp_path_factory.mktemp("tools")
    sim = SimulatedTeacher({}, tool_answers=STEPS)
    with (
        run_sim_teacher(sim) as url,
        running_proxy(tools_config(url, tmp)) as base,
        openai.OpenAI(base_url=base, api_key="x", max_retries=0) as client,
    ):
        for text in TEXTS[:1050]:
            client.chat.completions.create(model="intents", messages=ask(text), tools=TOOL_SCHEMAS)
        deadline = time.monotonic() + 120
        while 'tracer_model_info{task="intents"' not in httpx.get(base[:-3] + "/metrics").text:
            assert time.monotonic() < deadline, "no model was served"
            time.sleep(0.5)
        yield base, sim


def expected(text: str) -> tuple[str, dict[str, Any]] | None:
    calls = STEPS[text].get("tool_calls")
    return None if not calls else (calls[0]["name"], calls[0]["arguments"])  # type: ignore[index]


def test_whole_calls_are_answered_locally_and_parse_in_the_openai_client(served, request):
    base, _ = served
    client = openai.OpenAI(base_url=base, api_key="x", max_retries=0)
    request.addfinalizer(client.close)
    handled = right = 0
    for i, text in enumerate(TEXTS[1050:1350]):
        stream = i % 2 == 1
        if stream:
            with client.chat.completions.with_streaming_response.create(
                model="intents", messages=ask(text), tools=TOOL_SCHEMAS, stream=True
            ) as raw:
                decision = raw.headers["x-tracer-decision"]
                chunks = [c for c in raw.parse() if c.choices]
            calls: dict[int, dict[str, str]] = {}
            content = ""
            for c in chunks:
                delta = c.choices[0].delta
                content += delta.content or ""
                for call in delta.tool_calls or []:
                    slot = calls.setdefault(call.index, {"name": "", "arguments": ""})
                    slot["name"] += (call.function.name or "") if call.function else ""
                    slot["arguments"] += (call.function.arguments or "") if call.function else ""
            finish = chunks[-1].choices[0].finish_reason
            got = [(c["name"], json.loads(c["arguments"])) for c in calls.values()]
        else:
            raw = client.chat.completions.with_raw_response.create(
                model="intents", messages=ask(text), tools=TOOL_SCHEMAS
            )
            decision = raw.headers["x-tracer-decision"]
            message = raw.parse().choices[0].message
            finish = raw.parse().choices[0].finish_reason
            content = message.content or ""
            got = [
                (c.function.name, json.loads(c.function.arguments))
                for c in message.tool_calls or []
            ]
            for c in message.tool_calls or []:
                assert c.id and c.type == "function"
        if decision != "handled":
            continue
        handled += 1
        if expected(text) is None:
            assert content == REPLY and not got
            right += 1
        else:
            assert finish == "tool_calls" and len(got) == 1
            right += got[0] == expected(text)
    assert handled >= 100, handled
    assert right / handled >= 0.9


def test_the_async_client_gets_whole_calls_too(served):
    base, _ = served

    async def run() -> list[str]:
        async with openai.AsyncOpenAI(base_url=base, api_key="x", max_retries=0) as client:
            names = []
            for text in TEXTS[1350:1400]:
                reply = await client.chat.completions.create(
                    model="intents", messages=ask(text), tools=TOOL_SCHEMAS
                )
                for call in reply.choices[0].message.tool_calls or []:
                    names.append(call.function.name)
            return names

    names = asyncio.run(run())
    assert len(names) >= 30 and set(names) <= {"get_weather", "play_music", "set_alarm"}


def test_arguments_that_fail_the_schema_are_narrowed_to_the_cheaper_model(served, request):
    base, sim = served
    strict = copy.deepcopy(TOOL_SCHEMAS)
    for tool in strict:  # the client now requires a parameter the teacher never passed
        params = tool["function"]["parameters"]  # type: ignore[index]
        params["properties"]["units"] = {"type": "string"}
        params["required"] = [*params.get("required", []), "units"]
    client = openai.OpenAI(base_url=base, api_key="x", max_retries=0)
    request.addfinalizer(client.close)
    narrowed = sampled = 0
    audits_before = audits_of_tool_choices(base)
    for text in [t for t in TEXTS[1400:1500] if expected(t) is not None]:
        raw = client.chat.completions.with_raw_response.create(
            model="intents", messages=ask(text), tools=strict
        )
        # A narrowed request drawn for the teacher is an audit of the version's tool choice.
        sampled += "sampled for the teacher instead" in raw.headers.get("x-tracer-reason", "")
        if raw.headers.get("x-tracer-narrowed-to") is None:
            continue
        narrowed += 1
        name = raw.headers["x-tracer-narrowed-to"]
        assert raw.headers["x-tracer-decision"] == "deferred"
        assert raw.headers["x-tracer-lane"] == "small"
        call = raw.parse().choices[0].message.tool_calls[0]
        assert call.function.name == name
        sent = [r for r in sim.stats()["chat_requests"][-5:] if r["model"] == "small"]
        assert sent and sent[-1]["tools"] == [name]
        assert sent[-1]["tool_choice"] == {"type": "function", "function": {"name": name}}
    assert narrowed >= 10
    deadline = time.monotonic() + 10
    while audits_of_tool_choices(base) < audits_before + sampled and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sampled > 0 and audits_of_tool_choices(base) >= audits_before + sampled
    metrics = httpx.get(base[:-3] + "/metrics").text
    assert 'tracer_narrowed_total{task="intents"}' in metrics
    lines = metrics.splitlines()
    saved = [x for x in lines if x.startswith("tracer_prompt_tokens_saved_total")]
    assert saved and float(saved[0].split()[-1]) > 0


def audits_of_tool_choices(base: str) -> float:
    """Audits of the served version, agreeing or not, from /metrics."""
    text = httpx.get(base[:-3] + "/metrics").text
    pattern = r'tracer_audits_total\{outcome="(?:agree|disagree)",task="intents"\} (\S+)'
    return sum(float(x) for x in re.findall(pattern, text))


def test_classify_on_a_tool_task_returns_the_tool_name(served):
    base, _ = served
    texts = [t for t in TEXTS[1400:1500] if expected(t) is not None][:20]
    results = [
        httpx.post(f"{base}/classify", json={"task": "intents", "input": t}, timeout=30).json()
        for t in texts
    ]
    handled = [(r, t) for r, t in zip(results, texts, strict=True) if r["decision"] == "handled"]
    assert len(handled) >= 10
    for r, t in handled:
        assert r["label"] == expected(t)[0] or r["label"] in {
            "get_weather",
            "play_music",
            "set_alarm",
        }
        assert isinstance(r["accept_score"], float)
    assert sum(r["label"] == expected(t)[0] for r, t in handled) / len(handled) >= 0.9
