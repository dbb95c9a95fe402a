"""`tracer sim-teacher`: a simulated OpenAI-compatible teacher on loopback, from a data set.

Runs until SIGINT or SIGTERM and prints its base URL (ending in /v1) when ready, so a
proxy can be tried with no LLM key: point a `model_list` entry's `api_base` at it.
It answers each input with its label in the data set given (the sets `tracer demo`
takes: a trace JSONL file, a Banking77 or RTE folder or file, CLINC150), every split
of it; given the SNIPS folder, it answers agents' requests that carry `tools` with
the tool call each utterance stands for.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .teacher import SimulatedTeacher, run_sim_teacher

SPLITS = ("train", "test", "val", "validation", "dev", "validate", "oos_train", "oos_val",
          "oos_test")  # fmt: skip
OOS_REPLY = "Sorry, I can only help with music, books, films, restaurants and the weather."


def labelled(data: str) -> dict[str, str]:
    """Every labelled row of every split the data set has: input -> label."""
    from training.datasets import load_labelled

    rows: dict[str, str] = {}
    path = Path(data)
    if path.is_file():
        return {t.strip(): y for t, y in load_labelled(path)}
    for split in SPLITS:
        try:
            rows.update({t.strip(): y for t, y in load_labelled(path, split)})
        except (FileNotFoundError, ValueError):
            continue
    if not rows:
        raise SystemExit(f"tracer sim-teacher: no labelled rows in {data}")
    return rows


def snips_calls(folder: str, oos: str | None = None) -> dict[str, Any]:
    """SNIPS utterances as tool calls (train and validate), and out-of-scope queries
    (CLINC150's, when its folder is given) answered with one fixed reply."""
    from training.datasets import load_labelled, load_snips

    table: dict[str, Any] = {}
    for split in ("train", "validate"):
        for ex in load_snips(folder, split):
            table[ex.text.strip()] = {"tool_calls": [{"name": ex.tool, "arguments": ex.arguments}]}
    if oos:
        for split in ("oos_train", "oos_val", "oos_test"):
            for text, _ in load_labelled(oos, split):
                table[text.strip()] = {"content": OOS_REPLY}
    return table


def sim_teacher_command(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tracer sim-teacher", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data", required=True, help="a data set (as tracer demo takes), or the SNIPS folder"
    )
    p.add_argument("--oos", help="with SNIPS: CLINC150's folder, whose out-of-scope queries "
                   "get one fixed reply")  # fmt: skip
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="default: a free port")
    p.add_argument("--latency-ms", type=float, default=0.0)
    p.add_argument("--error-rate", type=float, default=0.0)
    p.add_argument("--noise", type=float, default=0.0, help="share of answers with a wrong label")
    p.add_argument("--noise-by-label", metavar="JSON_FILE",
                   help="a smaller model: {label: share of its inputs answered wrongly}, the "
                   "same inputs every time (overrides --noise for those labels)")  # fmt: skip
    p.add_argument("--format", dest="output_format", choices=("text", "json"), default="text")
    p.add_argument("--json-field", default="label")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(list(argv or []))
    is_snips = Path(args.data, "train_PlayMusic.json").is_file()
    answers = {} if is_snips else labelled(args.data)
    teacher = SimulatedTeacher(
        answers,
        labels=sorted(set(answers.values())) or None,
        latency_s=args.latency_ms / 1000,
        error_rate=args.error_rate,
        noise=args.noise,
        output_format=args.output_format,
        json_field=args.json_field,
        seed=args.seed,
        tool_answers=snips_calls(args.data, args.oos) if is_snips else None,
        noise_by_label=json.loads(Path(args.noise_by_label).read_text())
        if args.noise_by_label
        else None,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with run_sim_teacher(teacher, host=args.host, port=args.port) as url:
        print(url, flush=True)
        while not stop.wait(0.2):
            pass
    return 0
