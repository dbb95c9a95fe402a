"""`tracer traces import`: logs in three formats through the task's own rules, each record
stored once, every line accounted for, and nothing half-imported."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import text

from proxy import store, traces_import
from proxy.cli import main
from tests.proxy.postgres_server import run_apart

SYSTEM = "Classify the customer's banking question. Answer with one label."
LABELS = ["card_arrival", "card_lost", "balance"]
PRICES = {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6}
BANKING = {
    "name": "banking",
    "match": {"system_prompt_contains": "Classify the customer's banking question"},
    "teacher": "teacher",
    "labels": LABELS,
}
QUESTIONS = [
    ("where is my new card", "card_arrival"),
    ("i lost my card on the bus", "card_lost"),
    ("how much money do i have", "Balance."),
]


def config(tmp: Path, *tasks: dict[str, Any], url: str | None = None) -> Path:
    raw = {
        "model_list": [
            {
                "model_name": "teacher",
                "litellm_params": {"model": "openai/gpt-4o-mini", "api_key": "k"},
                "model_info": PRICES,
            }
        ],
        "tasks": list(tasks) or [BANKING],
        "store": {"url": url or f"sqlite+aiosqlite:///{tmp / 'tracer.db'}"},
        "artifacts": {"dir": str(tmp / "artifacts")},
    }
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def request(text: str, model: str = "gpt-4o-mini", system: str = SYSTEM) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": text}],
        "temperature": 0,
    }


def completion(content: str | None, **message: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1711652795,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, **message},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 20, "completion_tokens": 2, "total_tokens": 22},
    }


def jsonl(path: Path, *lines: Any) -> Path:
    path.write_text(
        "".join(line if isinstance(line, str) else json.dumps(line) + "\n" for line in lines),
        encoding="utf-8",
    )
    return path


def run(capsys: pytest.CaptureFixture[str], cfg: Path, file: Path, *extra: str, task="banking"):
    code = main(["traces", "import", task, str(file), "--config", str(cfg), "--json", *extra])
    captured = capsys.readouterr()
    return code, json.loads(captured.out), captured.err


def rows(tmp: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(tmp / "tracer.db") as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM traces ORDER BY id")]


def test_batch_output_joined_with_its_input_file(tmp_path, capsys):
    inputs = [
        {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": request(q)}
        for i, (q, _) in enumerate(QUESTIONS)
    ]
    inputs.append({"custom_id": "r9", "url": "/v1/chat/completions", "body": request("hi")})
    outputs: list[Any] = [
        {
            "id": f"b{i}",
            "custom_id": f"r{i}",
            "error": None,
            "response": {"status_code": 200, "request_id": "q", "body": completion(answer)},
        }
        for i, (_, answer) in enumerate(QUESTIONS)
    ]
    outputs.append(
        {
            "id": "b8",
            "custom_id": "r8",
            "response": None,
            "error": {"code": "batch_expired", "message": "expired"},
        }
    )
    outputs.append(
        {
            "id": "b9",
            "custom_id": "r9",
            "error": None,
            "response": {"status_code": 429, "body": {"error": {"message": "slow down"}}},
        }
    )
    file = jsonl(tmp_path / "output.jsonl", *outputs)
    requests = jsonl(tmp_path / "input.jsonl", *inputs)
    code, report, _ = run(capsys, config(tmp_path), file, "--requests", str(requests))
    assert code == 0
    assert (report["read"], report["matched"], report["stored"]) == (5, 4, 3)
    assert [(i["line"], i["reason"]) for i in report["invalid"]] == [
        (4, "the call failed: expired"),
        (5, "the call failed with status 429: slow down"),
    ]
    stored = rows(tmp_path)
    assert [(r["input"], r["label"], r["raw_output"]) for r in stored] == [
        ("where is my new card", "card_arrival", "card_arrival"),
        ("i lost my card on the bus", "card_lost", "card_lost"),
        ("how much money do i have", "balance", "Balance."),  # the label rules, as live
    ]
    first = stored[0]
    assert (first["source"], first["model"], first["valid"]) == ("import", "teacher", 1)
    assert first["cost_usd"] == pytest.approx(20 * 1e-6 + 2 * 2e-6)  # the teacher's prices
    assert (first["prompt_tokens"], first["completion_tokens"]) == (20, 2)
    assert first["created_at"].startswith("2024-03-28 19:06:35")  # when it was answered


def test_a_line_may_carry_its_request_beside_its_response(tmp_path, capsys):
    batch_line = {
        "custom_id": "a",
        "body": request("where is my new card"),
        "response": {"status_code": 200, "body": completion("card_arrival")},
    }
    pair = {"request": request("i lost my card on the bus"), "response": completion("card_lost")}
    file = jsonl(tmp_path / "pairs.jsonl", batch_line, pair)
    code, report, _ = run(capsys, config(tmp_path), file)
    assert code == 0 and report["format"] == "openai" and report["stored"] == 2


def test_litellm_standard_logging_payloads(tmp_path, capsys):
    task = {**BANKING, "match": {"model": "banking-intent"}}

    def payload(text: str, answer: str, **extra: Any) -> dict[str, Any]:
        return {
            "id": "x",
            "call_type": "acompletion",
            "status": "success",
            "model": "gpt-4o-mini",
            "model_group": "banking-intent",
            "messages": request(text)["messages"],
            "response": completion(answer),
            "response_cost": 0.25,
            "startTime": 1711652795.0,
            "endTime": 1711652795.5,
            "model_parameters": {"temperature": 0},
            **extra,
        }

    failed = payload("what is my balance", "x", status="failure", error_str="RateLimitError")
    file = jsonl(
        tmp_path / "litellm.jsonl",
        payload("where is my new card", "card_arrival"),
        {"standard_logging_object": payload("i lost my card on the bus", "card_lost")},
        failed,
        payload("hello", "no idea at all"),
    )
    code, report, _ = run(capsys, config(tmp_path, task), file)
    assert code == 0 and report["format"] == "litellm"
    assert (report["matched"], report["stored"]) == (4, 2)
    reasons = dict((i["line"], i["reason"]) for i in report["invalid"])
    assert reasons[3] == "the call failed: RateLimitError"
    assert reasons[4].startswith("the answer is not a valid label of the task")
    stored = rows(tmp_path)
    assert [r["cost_usd"] for r in stored] == [0.25, 0.25]  # what LiteLLM says it cost
    assert stored[0]["latency_ms"] == pytest.approx(500.0)


def test_trace_files_go_through_the_tasks_label_rules(tmp_path, capsys):
    file = jsonl(
        tmp_path / "traces.jsonl",
        {"input": " where is my new card ", "label": "Card_Arrival"},
        {"input": "what now", "label": "weather"},
        {"input": "something", "label": "balance", "task": "another"},
        {"input": "my card is late", "label": "card_arrival", "source": "deferred"},
        {"input": "i lost it", "label": "card_lost", "raw_output": "balance"},
        {"input": "how much is left", "label": "balance", "source": "explore"},
    )
    code, report, _ = run(capsys, config(tmp_path), file)
    assert code == 0
    assert report["not_matched"] == [{"line": 3, "reason": "its `task` is `another`"}]
    assert [i["line"] for i in report["invalid"]] == [2, 5]
    stored = rows(tmp_path)
    assert [(r["input"], r["label"], r["raw_output"], r["source"]) for r in stored] == [
        ("where is my new card", "card_arrival", "Card_Arrival", "import"),
        # a model's hard case is never a sample of the traffic: it stays train-only
        ("my card is late", "card_arrival", "card_arrival", "deferred"),
        ("how much is left", "balance", "balance", "import"),
    ]


def test_malformed_lines_are_reported_with_their_numbers(tmp_path, capsys):
    good = {"input": "where is my new card", "label": "card_arrival"}
    file = jsonl(tmp_path / "t.jsonl", good, "{not json\n", "\n", "[1, 2]\n", {"input": 3})
    code, report, _ = run(capsys, config(tmp_path), file, "--format", "traces")
    assert code == 0 and report["read"] == 4 and report["stored"] == 1
    assert [(i["line"], i["reason"].split(":")[0]) for i in report["invalid"]] == [
        (2, "not JSON"),
        (4, "not a JSON object"),
        (5, "`input` is missing or not a string"),
    ]


def test_duplicates_within_the_file_and_against_the_store(tmp_path, capsys):
    cfg = config(tmp_path)
    pair = {"request": request("where is my new card"), "response": completion("card_arrival")}
    other = {"request": request("i lost my card"), "response": completion("card_lost")}
    differently = {"request": request("i lost my card"), "response": completion("card_arrival")}
    file = jsonl(tmp_path / "a.jsonl", pair, pair, other)
    code, report, _ = run(capsys, cfg, file)
    assert (code, report["stored"], report["repeated_in_file"]) == (0, 2, 1)
    again = jsonl(tmp_path / "b.jsonl", pair, other, differently)
    code, report, _ = run(capsys, cfg, again)
    assert code == 0  # the file's content is in the store: that is a success
    assert (report["stored"], report["already_stored"], report["duplicates"]) == (1, 2, 2)
    assert len(rows(tmp_path)) == 3  # another answer to the same input is another trace


def test_a_file_that_matches_no_task_stores_nothing_and_says_so(tmp_path, capsys):
    cfg = config(tmp_path, {**BANKING, "match": {"model": "banking-intent"}})
    pairs = [{"request": request(q), "response": completion(a)} for q, a in QUESTIONS]
    file = jsonl(tmp_path / "logs.jsonl", *pairs)
    code, report, err = run(capsys, cfg, file)
    assert code == 1 and report["matched"] == 0 and report["stored"] == 0
    assert "nothing in" in err and "matched task banking" in err
    assert "3 x the model is not the task's alias `banking-intent`" in err
    assert "--model ALIAS" in err
    assert not (tmp_path / "tracer.db").exists()
    # The requests were sent to the upstream model; through the proxy they name the alias.
    code, report, _ = run(capsys, cfg, file, "--model", "banking-intent")
    assert code == 0 and report["stored"] == 3


def test_a_record_another_task_claims_first_is_not_matched(tmp_path, capsys):
    first = {**BANKING, "name": "triage", "match": {"model": "gpt-4o-mini"}}
    cfg = config(tmp_path, first, BANKING)
    file = jsonl(
        tmp_path / "logs.jsonl",
        {"request": request("where is my new card"), "response": completion("card_arrival")},
        {"request": request("where is it", model="x"), "response": completion("card_arrival")},
    )
    code, report, _ = run(capsys, cfg, file)
    assert code == 0 and report["stored"] == 1
    assert report["not_matched"] == [{"line": 1, "reason": "it matches task `triage` first"}]


def test_a_dry_run_stores_nothing(tmp_path, capsys):
    cfg = config(tmp_path)
    file = jsonl(tmp_path / "t.jsonl", {"input": "where is my card", "label": "card_arrival"})
    code, report, _ = run(capsys, cfg, file, "--dry-run")
    assert code == 0 and report["stored"] == 1 and report["dry_run"]
    assert not (tmp_path / "tracer.db").exists()


def test_tool_task_records_are_labelled_by_the_tool_called(tmp_path, capsys):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    task = {"name": "agent", "kind": "tools", "match": {"model": "agent"}, "teacher": "teacher"}
    call = {
        "id": "c1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    with_tools = {**request("weather in paris?", model="agent"), "tools": tools}
    file = jsonl(
        tmp_path / "agent.jsonl",
        {"request": with_tools, "response": completion(None, tool_calls=[call])},
        {"request": request("hi", model="agent"), "response": completion("hello")},
    )
    code, report, _ = run(capsys, config(tmp_path, task), file, task="agent")
    assert code == 0 and report["stored"] == 1
    assert "carries no `tools`" in report["not_matched"][0]["reason"]
    (stored,) = rows(tmp_path)
    assert stored["label"] == "get_weather"
    assert json.loads(stored["raw_output"]) == {
        "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]
    }


def failing_midway(monkeypatch: pytest.MonkeyPatch) -> None:
    """Insert in chunks of 2 and fail on the second chunk, after the first went in."""
    original = traces_import._insert_chunk
    calls = {"n": 0}

    async def insert(conn: Any, chunk: list[dict[str, Any]]) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("the disk went away")
        await original(conn, chunk)

    monkeypatch.setattr(traces_import, "CHUNK", 2)
    monkeypatch.setattr(traces_import, "_insert_chunk", insert)


def five_traces(tmp: Path) -> Path:
    items = [{"input": f"where is card number {i}", "label": "card_arrival"} for i in range(5)]
    return jsonl(tmp / "five.jsonl", *items)


def test_an_error_midway_leaves_no_rows(tmp_path, capsys, monkeypatch):
    cfg = config(tmp_path)
    seed = jsonl(tmp_path / "seed.jsonl", {"input": "already here", "label": "balance"})
    assert run(capsys, cfg, seed)[0] == 0
    failing_midway(monkeypatch)
    code = main(["traces", "import", "banking", str(five_traces(tmp_path)), "--config", str(cfg)])
    assert code == 1
    assert "nothing was imported" in capsys.readouterr().err
    assert [r["input"] for r in rows(tmp_path)] == ["already here"]


def pg_inputs(url: str) -> list[str]:
    async def read() -> list[str]:
        engine = store.create_engine(url)
        try:
            async with engine.connect() as conn:
                query = text("SELECT input FROM traces ORDER BY id")
                return [row[0] for row in (await conn.execute(query)).all()]
        finally:
            await engine.dispose()

    return run_apart(read)


def test_an_error_midway_leaves_no_rows_on_postgresql(tmp_path, capsys, monkeypatch, pg_url):
    cfg = config(tmp_path, url=pg_url)
    first = jsonl(
        tmp_path / "seed.jsonl",
        {"input": "already here", "label": "balance"},
        {"input": "already here", "label": "balance"},
    )
    code, report, _ = run(capsys, cfg, first)
    assert (code, report["stored"], report["repeated_in_file"]) == (0, 1, 1)
    code, report, _ = run(capsys, cfg, first)
    assert (code, report["stored"], report["already_stored"]) == (0, 0, 1)
    failing_midway(monkeypatch)
    code = main(["traces", "import", "banking", str(five_traces(tmp_path)), "--config", str(cfg)])
    assert code == 1
    assert "nothing was imported" in capsys.readouterr().err
    assert pg_inputs(pg_url) == ["already here"]
