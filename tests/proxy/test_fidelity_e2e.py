"""A handled answer is the teacher's own answer, byte for byte, whatever its spelling.

Teachers answer in mixed case, in quotes, with trailing punctuation, or in JSON with
fields beyond the label. Labels are normalised to learn, but the proxy answers with
each label's most frequent raw answer, streamed or not.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import openai
import pytest

from proxy.sim.synthetic import INTENTS, make_intents
from proxy.sim.teacher import SimulatedTeacher, run_sim_teacher
from tests.support import intents_config, running_proxy

LABELS = sorted(INTENTS)
ROWS = make_intents(1500, seed=11)


def spellings_text() -> dict[str, list[str]]:
    """Every label in an odd spelling; one label in two, the first twice as often."""
    styles = [
        lambda x: x.title() + ".",
        lambda x: f'"{x}"',
        lambda x: x.upper(),
        lambda x: f"'{x.title()}'.",
        lambda x: f"  {x}  ",
    ]
    out = {label: [styles[i % len(styles)](label)] for i, label in enumerate(LABELS[:-1])}
    out[LABELS[-1]] = [LABELS[-1].title(), LABELS[-1].title(), LABELS[-1]]
    return out


def spellings_json() -> dict[str, list[str]]:
    return {
        label: [json.dumps({"intent": label, "confidence": "high", "why": f"it is {label}"})]
        for label in LABELS
    }


def wait_for_model(base: str, timeout_s: float = 120.0) -> None:
    root = base.removesuffix("/v1")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if 'tracer_model_info{task="intents"' in httpx.get(f"{root}/metrics").text:
            return
        time.sleep(0.5)
    raise AssertionError("no model was served in time")


def handled_answers(client: openai.OpenAI, rows: list[tuple[str, str]]) -> list[tuple[str, Any]]:
    """(label, content) of handled answers, non-streamed and streamed alternately."""
    out = []
    for i, (text, _) in enumerate(rows):
        messages = [{"role": "user", "content": text}]
        if i % 2:
            with client.chat.completions.with_streaming_response.create(
                model="intents", messages=messages, stream=True
            ) as raw:
                if raw.headers["x-tracer-decision"] != "handled":
                    continue
                events = [e for e in raw.iter_lines() if e.startswith("data: {")]
                chunks = [json.loads(e[6:]) for e in events]
                content = "".join(
                    c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]
                )
                out.append((chunks[-1]["tracer"]["label"], content))
        else:
            raw = client.chat.completions.with_raw_response.create(
                model="intents", messages=messages
            )
            if raw.headers["x-tracer-decision"] == "handled":
                body = json.loads(raw.text)
                out.append((body["tracer"]["label"], body["choices"][0]["message"]["content"]))
    return out


@pytest.mark.parametrize(
    ("style", "task"),
    [
        ("text", {"labels": None}),
        ("closed", {}),
        ("json", {"labels": None, "output": {"format": "json", "field": "intent"}}),
    ],
)
def test_handled_answers_are_the_teachers_words(tmp_path, style, task):
    spellings = spellings_json() if style == "json" else spellings_text()
    sim = SimulatedTeacher(dict(ROWS), labels=LABELS, spellings=spellings)
    with run_sim_teacher(sim) as url:
        config = intents_config(
            url,
            tmp_path,
            task={"target": 0.8, "confidence": 0.9, "min_coverage": 0.05, **task},
            refit={"min_new_traces": 1100, "interval_seconds": 3600},
        )
        with running_proxy(config) as base:
            client = openai.OpenAI(base_url=base, api_key="x", max_retries=0)
            taught = {
                client.chat.completions.create(
                    model="intents", messages=[{"role": "user", "content": text}]
                ).model
                for text, _ in ROWS[:1100]
            }
            wait_for_model(base)
            answers = handled_answers(client, ROWS[1100:1400])
            # One `model` field whoever answered: the one the teacher's answers carry.
            models: dict[str, set[str]] = {}
            for text, _ in ROWS[1400:1460]:
                raw = client.chat.completions.with_raw_response.create(
                    model="intents", messages=[{"role": "user", "content": text}]
                )
                models.setdefault(raw.headers["x-tracer-lane"], set()).add(raw.parse().model)
            # A response_format the local answer cannot promise is deferred.
            raw = client.chat.completions.with_raw_response.create(
                model="intents", messages=[{"role": "user", "content": ROWS[1400][0]}],
                response_format={"type": "json_object"},
            )  # fmt: skip
            client.close()
    assert taught == models["surrogate"] == {"teacher"}, (taught, models)
    honoured = "response_format" not in raw.headers["x-tracer-reason"]
    assert honoured == (style == "json"), raw.headers["x-tracer-reason"]
    assert len(answers) >= 20
    expected = {label: max(set(raws), key=raws.count) for label, raws in spellings.items()}
    for label, content in answers:
        assert label in expected, label  # the label: normalised (or the set's spelling)
        assert content == expected[label], (label, content)
    if style != "json":
        odd = {raws[0] for raws in spellings.values()}
        assert len(odd & {content for _, content in answers}) >= 3
