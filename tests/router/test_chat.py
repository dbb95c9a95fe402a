"""The chat <-> task mapping: which text is the input, what the teacher's answer means."""

from __future__ import annotations

import json

import pytest

from router.chat import (
    MAX_LABEL_CHARS,
    extract_input,
    parse_label,
    synthesize_completion,
    synthesize_stream,
)
from router.tools import tool_label

LABELS = ["card_arrival", "Lost_Card"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("card_arrival", "card_arrival"),
        ("  Card_Arrival \n", "card_arrival"),
        ('"card_arrival"', "card_arrival"),
        ("'card_arrival'.", "card_arrival"),
        ("`lost_card`", "Lost_Card"),
        ("```\ncard_arrival\n```", "card_arrival"),
        ("card arrival", None),
        ("something else", None),
        ("", None),
        (None, None),
    ],
)
def test_text_answers_are_normalised_into_the_closed_set(raw, expected):
    assert parse_label(raw, labels=LABELS) == expected


def test_open_label_set_keeps_any_normalised_answer():
    assert parse_label("  Refund  Request ", labels=None) == "refund request"


def test_an_answer_longer_than_the_label_column_is_not_a_label():
    # prose, not a class: stored as an invalid answer alike on SQLite and PostgreSQL
    assert parse_label("x" * MAX_LABEL_CHARS, labels=None) == "x" * MAX_LABEL_CHARS
    assert parse_label("x" * (MAX_LABEL_CHARS + 1), labels=None) is None
    calls = [{"function": {"name": f"tool_{i:03d}"}} for i in range(40)]
    assert tool_label(calls[:2], None) == "tool_000+tool_001"
    assert tool_label(calls, None) is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('{"intent": "Card_Arrival"}', "card_arrival"),
        ('```json\n{"intent": "lost_card"}\n```', "Lost_Card"),
        ('{"other": "card_arrival"}', None),
        ("card_arrival", None),
        ('{"intent": ["card_arrival"]}', None),
    ],
)
def test_json_answers_read_the_named_field(raw, expected):
    assert parse_label(raw, "json", "intent", LABELS) == expected


def test_input_extraction():
    messages = [
        {"role": "system", "content": "Classify."},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "Query: last one"}]},
    ]
    assert extract_input(messages) == "Query: last one"
    assert extract_input(messages, "first_user") == "first"
    assert extract_input(messages, "all_user") == "first\nQuery: last one"
    assert extract_input(messages, pattern=r"Query: (.*)") == "last one"
    assert extract_input(messages, pattern=r"Nope: (.*)") is None
    assert extract_input([{"role": "system", "content": "x"}]) is None
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
    assert extract_input(image) is None


def test_synthesized_answers_are_chat_completions():
    body = synthesize_completion('{"intent": "card_arrival"}', "alias", {"tracer": {"x": 1}})
    assert body["object"] == "chat.completion" and body["model"] == "alias"
    assert body["choices"][0]["message"]["content"] == '{"intent": "card_arrival"}'
    assert body["choices"][0]["finish_reason"] == "stop" and body["tracer"] == {"x": 1}
    events = list(synthesize_stream("card_arrival", "alias", include_usage=True))
    assert events[-1] == "data: [DONE]\n\n"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == (
        "card_arrival"
    )
    assert chunks[-1]["usage"]["total_tokens"] == 0
