"""Tool calls on SNIPS: an agent's steps answered whole, narrowed, or by the teacher.

SNIPS train (13,784 utterances of 7 intents, read as tool calls: the intent is the
tool, the slots its arguments) and CLINC150's out-of-scope queries from oos_train and
oos_val (answered by the teacher with one fixed reply, no call) are shuffled and sent
through the proxy by 16 openai clients as an agent would, with the 7 tool schemas,
2,000 requests a day for 4 days. The proxy runs a tool task with the refit rule on
(`min_new_traces` 1,000, time compressed: the loop's work every 100 requests).
Then the held-out sets go through, the live checks still run every 100 requests but no
fit: SNIPS validate (700) and oos_test (1,000).

Reported, by tool and overall: coverage of local whole calls and their agreement with
the teacher's call (name and arguments as parsed JSON), coverage of narrowed calls,
prompt tokens saved, and the latency of local and teacher answers.

    .venv/bin/python bench/tools.py

Targets (issue 17, alpha 0.95): whole-call agreement on local calls >= 0.95; local
whole-call coverage >= 50% of requests by day 4; whole + narrowed >= 85%; the
out-of-scope reply answered locally for at least half of the out-of-scope queries,
and no more than alpha's allowance of them answered with a tool call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import openai  # noqa: E402

from proxy import store  # noqa: E402
from proxy.app import create_app  # noqa: E402
from proxy.config import parse_config  # noqa: E402
from proxy.server import uvicorn_options  # noqa: E402
from proxy.sim.cli import OOS_REPLY, snips_calls  # noqa: E402
from proxy.sim.flywheel import _LoopCapture  # noqa: E402
from proxy.sim.teacher import SimulatedTeacher, run_sim_teacher  # noqa: E402
from proxy.sim.threaded import serve_in_thread  # noqa: E402
from training.datasets import load_labelled, load_snips, snips_tool_schemas  # noqa: E402

SNIPS = REPO.parent / "shared" / "datasets" / "snips"
CLINC = REPO.parent / "shared" / "datasets" / "clinc150"
TASK = "assistant"


def config(teacher_url: str, work: Path, target: float, embedder: str) -> Any:
    model = {"model_name": "teacher", "litellm_params": {
        "model": "openai/gpt-4o-mini", "api_key": "k", "api_base": teacher_url}}  # fmt: skip
    return parse_config(
        {
            "model_list": [model],
            "tasks": [
                {
                    "name": TASK,
                    "kind": "tools",
                    "match": {"model": TASK},
                    "teacher": "teacher",
                    "target": target,
                    "min_coverage": 0.05,
                    "embedder": embedder,
                }
            ],
            "store": {"url": f"sqlite+aiosqlite:///{work / 'tracer.db'}"},
            "artifacts": {"dir": str(work / "artifacts")},
            "refit": {"min_new_traces": 1000, "interval_seconds": 1e9},
        },
        env={},
    )


async def send(
    base: str, texts: Sequence[str], tools: list[Any], concurrency: int
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{} for _ in texts]
    queue = list(enumerate(texts))
    async with openai.AsyncOpenAI(base_url=base, api_key="x", max_retries=0, timeout=60) as client:

        async def worker() -> None:
            while queue:
                i, text = queue.pop()
                started = time.perf_counter()
                raw = await client.chat.completions.with_raw_response.create(
                    model=TASK, messages=[{"role": "user", "content": text}], tools=tools
                )
                message = raw.parse().choices[0].message
                calls = [(c.function.name, json.loads(c.function.arguments or "{}"))
                         for c in message.tool_calls or []]  # fmt: skip
                out[i] = {"decision": raw.headers["x-tracer-decision"],
                          "reason": raw.headers.get("x-tracer-reason", ""),
                          "narrowed": raw.headers.get("x-tracer-narrowed-to"),
                          "seconds": time.perf_counter() - started,
                          "calls": calls, "content": message.content}  # fmt: skip

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out


def agrees(result: dict[str, Any], answer: dict[str, Any]) -> bool:
    calls = [(c["name"], c["arguments"]) for c in answer.get("tool_calls") or []]
    if calls:
        return result["calls"] == calls
    return not result["calls"] and result["content"] == answer.get("content")


def tool_of(answer: dict[str, Any]) -> str:
    calls = answer.get("tool_calls") or []
    return calls[0]["name"] if calls else "(reply)"


def summarise(name: str, results: list[dict[str, Any]], answers: list[dict[str, Any]]) -> str:
    n = len(results)
    whole = [(r, a) for r, a in zip(results, answers, strict=True) if r["decision"] == "handled"]
    narrowed = sum(1 for r in results if r["narrowed"])
    agree = sum(agrees(r, a) for r, a in whole)
    agreement = f"{agree / len(whole):.3f}" if whole else "-"
    return (f"| {name} | {n} | {len(whole) / n:.3f} | {agreement} | {narrowed / n:.3f} | "
            f"{(len(whole) + narrowed) / n:.3f} |")  # fmt: skip


def whole_calls(folder: Path) -> str:
    """A version's whole-call certificate, from its manifest."""
    try:
        tools = json.loads((folder / "manifest.json").read_text())["tools"]
    except (OSError, KeyError, ValueError):
        return "no tool section"
    cal = tools["whole_calibration"]
    if cal is None:
        return f"whole calls: not tested (bound foretold on validation {tools['whole_foretold']})"
    start, delta = tools["whole_start_count"], tools["whole_delta"]
    return (f"whole calls: calibration {cal['n']}, started at {start}, delta {delta:.2g}, "
            f"certified coverage {cal['coverage']:.3f}")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--per-day", type=int, default=2000)
    p.add_argument("--days", type=int, default=4)
    p.add_argument("--step", type=int, default=100)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--target", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--embedder", default="tfidf", help="the task's embedder (tasks[].embedder)")
    args = p.parse_args(argv)
    table = snips_calls(str(SNIPS), str(CLINC))
    tools = snips_tool_schemas(SNIPS)
    stream = [ex.text.strip() for ex in load_snips(SNIPS, "train")]
    stream += [
        t.strip() for split in ("oos_train", "oos_val") for t, _ in load_labelled(CLINC, split)
    ]
    random.Random(args.seed).shuffle(stream)
    stream = stream[: args.per_day * args.days]
    held = [ex.text.strip() for ex in load_snips(SNIPS, "validate")]
    oos = [t.strip() for t, _ in load_labelled(CLINC, "oos_test")]
    sim = SimulatedTeacher({}, tool_answers=table)
    with tempfile.TemporaryDirectory(prefix="tracer-tools-") as tmp, run_sim_teacher(sim) as url:
        cfg = config(url, Path(tmp), args.target, args.embedder)
        app = create_app(cfg, refit=False)
        wrapped = _LoopCapture(app)
        options = uvicorn_options(keep_alive_s=75, read_timeout_s=30)
        with serve_in_thread(wrapped, "127.0.0.1", 0, name="tracer-tools", **options) as root:
            base, state = f"{root}/v1", app.state.tracer
            assert wrapped.loop is not None
            task = cfg.tasks[0]

            async def tick() -> str | None:
                await state.writer.flush()
                await state.poll()
                if not await state.refits.due(task):
                    return None
                outcome = await state.refits.refit(task)
                await state.poll()
                return f"{outcome.version} {outcome.outcome}"

            print("| day | requests | local whole calls | narrowed | agreement (local) | fits |")
            print("|---|---|---|---|---|---|")
            for day in range(args.days):
                rows = stream[day * args.per_day : (day + 1) * args.per_day]
                results, fits = [], []
                for start in range(0, len(rows), args.step):
                    chunk = rows[start : start + args.step]
                    results += asyncio.run(send(base, chunk, tools, args.concurrency))
                    done = asyncio.run_coroutine_threadsafe(tick(), wrapped.loop).result(1800)
                    if done:
                        fits.append(done)
                answers = [table[t] for t in rows]
                local = [
                    (r, a)
                    for r, a in zip(results, answers, strict=True)
                    if r["decision"] == "handled"
                ]
                agreement = sum(agrees(r, a) for r, a in local) / len(local) if local else None
                print(f"| {day + 1} | {len(rows)} | {len(local) / len(rows):.3f} | "
                      f"{sum(1 for r in results if r['narrowed']) / len(rows):.3f} | "
                      f"{'-' if agreement is None else f'{agreement:.3f}'} | {'; '.join(fits)} |",
                      flush=True)  # fmt: skip
                missed = [r for r in results if r["decision"] != "handled"]
                why = Counter(r["reason"].split(";")[-1].strip() for r in missed)
                top = "; ".join(f"{n} {reason}" for reason, n in why.most_common(3))
                print(f"  not answered locally, why (the reason's last clause): {top}")
            history = asyncio.run_coroutine_threadsafe(
                store.refit_history(state.engine, TASK), wrapped.loop
            ).result(60)
            print("\nrefits, as settled at the end of day 4:")
            for row in reversed(history):
                folder = state.models.store.version_dir(TASK, row["version"])
                print(
                    f"  {row['version']}: {row['outcome']} ({row['reason']}); {whole_calls(folder)}"
                )

            async def watch() -> None:  # the live checks, at the days' pace (no fits)
                await state.writer.flush()
                await state.poll()

            def held_out(texts: list[str]) -> list[dict[str, Any]]:
                out: list[dict[str, Any]] = []
                for start in range(0, len(texts), args.step):
                    out += asyncio.run(send(base, texts[start : start + args.step], tools,
                                            args.concurrency))  # fmt: skip
                    asyncio.run_coroutine_threadsafe(watch(), wrapped.loop).result(600)
                return out

            held_results, oos_results = held_out(held), held_out(oos)
            metrics = state.metrics.registry
            saved = (
                metrics.get_sample_value("tracer_prompt_tokens_saved_total", {"task": TASK}) or 0
            )
            narrowed_n = metrics.get_sample_value("tracer_narrowed_total", {"task": TASK}) or 0
    held_answers = [table[t] for t in held]
    columns = "local whole coverage | local agreement | narrowed | whole + narrowed"
    print(f"\n| held-out set | requests | {columns} |")
    print("|---|---|---|---|---|---|")
    print(summarise("SNIPS validate", held_results, held_answers))
    by_tool: dict[str, list[int]] = defaultdict(list)
    for i, a in enumerate(held_answers):
        by_tool[tool_of(a)].append(i)
    for tool, idx in sorted(by_tool.items()):
        print(
            summarise(f"  {tool}", [held_results[i] for i in idx], [held_answers[i] for i in idx])
        )
    all_results, all_answers = held_results + oos_results, held_answers + [table[t] for t in oos]
    print(summarise("validate + oos_test", all_results, all_answers))
    reply_local = sum(r["decision"] == "handled" and r["content"] == OOS_REPLY for r in oos_results)
    call_local = sum(r["decision"] == "handled" and bool(r["calls"]) for r in oos_results)
    call_narrowed = sum(bool(r["narrowed"]) for r in oos_results)
    print(f"\nout of scope (oos_test, {len(oos)}): the reply answered locally for "
          f"{reply_local / len(oos):.3f} (target >= 0.5); a tool call answered locally for "
          f"{call_local / len(oos):.3f} (allowance {1 - args.target:.2f}); narrowed to a "
          f"tool (a call the teacher would not make) {call_narrowed / len(oos):.3f}")  # fmt: skip
    sent = oos_results  # chunk by chunk (within a chunk, `send` takes them from the end)
    size = len(sent) // 4
    quarters = [sum(bool(r["narrowed"]) for r in sent[q * size : (q + 1) * size]) for q in range(4)]
    print(f"  narrowed out-of-scope queries by quarter of the order sent: {quarters}")
    local_s = [r["seconds"] for r in held_results + oos_results if r["decision"] == "handled"]
    teacher_s = [r["seconds"] for r in held_results + oos_results if r["decision"] != "handled"]
    print(f"prompt tokens saved by {narrowed_n:.0f} narrowed calls: {saved:.0f} "
          f"({saved / max(narrowed_n, 1):.0f} a call)")  # fmt: skip
    for what, values in (("local", local_s), ("teacher (0 ms simulated)", teacher_s)):
        if values:
            print(
                f"latency, {what}: p50 {1000 * statistics.median(values):.1f} ms over {len(values)}"
            )
    print("decisions on held-out: " + str(Counter(r["decision"] for r in all_results)))
    why = Counter(r["reason"].split(";")[-1].strip()[:80] for r in all_results)
    print("held-out, why (the reason's last clause): " + str(why.most_common(4)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
