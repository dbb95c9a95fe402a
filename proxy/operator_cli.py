"""The operator's verbs, `tracer traces import` and `tracer status`: their arguments.

Wired into `tracer` by `proxy/cli.py`. Only argparse is imported here, so `tracer --help`
stays quick; a verb imports its work when it runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

FORMATS = ("traces", "openai", "litellm")  # proxy.log_formats.FORMATS


def _import(args: argparse.Namespace) -> int:
    """Read, match, store (or --dry-run), and say what happened; 0 when the file gave the
    task something (stored now or already), 1 when nothing matched or could be stored."""
    import asyncio
    import json
    from collections import Counter
    from pathlib import Path

    from sqlalchemy.exc import SQLAlchemyError

    from .config import load_config
    from .log_formats import LogFormatError, read_records
    from .paths import sqlite_file
    from .traces_import import Importer, ImportReport, import_rows

    config = load_config(args.config)
    task = config.task(args.task)
    if task is None:
        names = ", ".join(t.name for t in config.tasks) or "none"
        print(
            f"tracer: no task named {args.task!r} in {args.config} (tasks: {names})",
            file=sys.stderr,
        )
        return 2
    config.require_env("store")
    path = Path(args.file)
    try:
        requests = Path(args.requests) if args.requests else None
        fmt, records = read_records(path, args.format, requests)
        report = ImportReport(task.name, str(path), fmt, dry_run=args.dry_run)
        rows = Importer(config, task, args.model).prepare(records, report)
    except (OSError, LogFormatError) as exc:
        print(f"tracer: {exc}", file=sys.stderr)
        return 2
    file = sqlite_file(config.store.url)
    if rows and not (args.dry_run and file is not None and not file.is_file()):
        if file is not None:
            file.parent.mkdir(parents=True, exist_ok=True)
        try:
            asyncio.run(import_rows(config.store.url, rows, report, args.dry_run))
        except (SQLAlchemyError, OSError) as exc:
            first = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            print(
                f"tracer: cannot write the store at {file or 'store.url'}: {first}; "
                "nothing was imported",
                file=sys.stderr,
            )
            return 1
    else:
        report.stored = len(rows)  # a dry run, and no store yet: all of them would be
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.text())
    if report.matched == 0:
        reasons = Counter(reason for _, reason in report.not_matched).most_common(3)
        why = "; ".join(f"{n} x {reason}" for reason, n in reasons) or "no usable line"
        hint = " (--model ALIAS takes every request as sent with that model)" * ("alias" in why)
        print(
            f"tracer: nothing in {path} matched task {task.name}: {why}{hint}; nothing was stored",
            file=sys.stderr,
        )
    elif not report.usable:
        print(f"tracer: no line of {path} could be stored in task {task.name}", file=sys.stderr)
    elif report.stored and not args.json and not args.dry_run:
        print(
            f"next: `tracer serve --config {args.config}` fits at once when the task has "
            f"refit.min_new_traces new traces; `tracer traces export {task.name} --config "
            f"{args.config} > traces.jsonl && tracer scan traces.jsonl` shows what a fit "
            "would give first",
            file=sys.stderr,
        )
    return 0 if report.usable else 1


def _status(args: argparse.Namespace) -> int:
    from .status import status_command

    return status_command(args)


def add_import_parser(traces_sub: Any) -> None:
    """`tracer traces import TASK FILE --config FILE`."""
    p = traces_sub.add_parser("import", help="store a task's traces from logs it already has")
    p.add_argument("task")
    p.add_argument(
        "file",
        help="JSONL: traces ({input, label}), OpenAI request and response pairs or Batch API "
        "output, or LiteLLM standard logging payloads",
    )
    p.add_argument("--config", required=True)
    p.add_argument("--format", choices=FORMATS, help="default: told from the first line")
    p.add_argument("--requests", help="the Batch API input file, joined on custom_id")
    p.add_argument(
        "--model",
        help="take every request as sent with this model: the task's alias, when the logs "
        "name the upstream model",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="report what would be stored; store nothing"
    )
    p.add_argument("--json", action="store_true", help="the report as JSON")
    p.set_defaults(run=_import)


def add_status_parser(sub: Any) -> None:
    """`tracer status --config FILE [--json]`."""
    p = sub.add_parser(
        "status", help="per task: served version, certified and live figures, fallback, refits"
    )
    p.add_argument("--config", required=True)
    p.add_argument("--task", help="only this task")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=_status)
