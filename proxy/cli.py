"""The `tracer` command.

Heavy imports (LiteLLM, uvicorn, scikit-learn) happen inside the subcommand that
needs them, so `tracer --help` and `tracer eval` start quickly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence

from .config import ConfigError, is_loopback, load_config


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app

    config = load_config(args.config)
    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    if not config.server.api_keys and not is_loopback(host):
        raise ConfigError(f"--host {host} is not a loopback address and server.api_keys is empty")
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    uvicorn.run(
        create_app(config),
        host=host,
        port=port,
        log_level=args.log_level,
        access_log=args.access_log,
        timeout_graceful_shutdown=10,
    )
    return 0


def _export(args: argparse.Namespace) -> int:
    from . import store

    config = load_config(args.config)
    if config.task(args.task) is None:
        names = ", ".join(t.name for t in config.tasks) or "none"
        print(
            f"tracer: no task named {args.task!r} in {args.config} (tasks: {names})",
            file=sys.stderr,
        )
        return 2

    async def run() -> int:
        engine = store.create_engine(config.store.url)
        n = 0
        try:
            async for row in store.iter_traces(engine, args.task, valid_only=not args.all):
                record = {
                    "input": row["input"],
                    "label": row["label"],
                    "id": row["id"],
                    "task": row["task"],
                    "model": row["model"],
                    "raw_output": row["raw_output"],
                    "created_at": row["created_at"].isoformat() if row["created_at"] else None,
                }
                sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
                n += 1
        finally:
            await engine.dispose()
        print(f"tracer: exported {n} traces of task {args.task}", file=sys.stderr)
        return 0

    return asyncio.run(run())


def _delegate(module: str, function: str) -> object:
    def run(args: argparse.Namespace) -> int:
        import importlib

        command = getattr(importlib.import_module(module), function)
        return int(command(args.rest))

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tracer",
        description="An OpenAI-compatible proxy that learns a parity-gated surrogate "
        "for classification calls.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", required=True, help="YAML configuration file")
    serve.add_argument("--host", help="override server.host")
    serve.add_argument("--port", type=int, help="override server.port")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--access-log", action="store_true", help="log every request line")
    serve.set_defaults(run=_serve)

    traces = sub.add_parser("traces", help="work with stored traces")
    traces_sub = traces.add_subparsers(dest="traces_command", required=True)
    export = traces_sub.add_parser("export", help="write a task's traces as JSONL to stdout")
    export.add_argument("task")
    export.add_argument("--config", required=True)
    export.add_argument("--all", action="store_true", help="include invalid answers (label null)")
    export.set_defaults(run=_export)

    for name, module, function, text in [
        ("fit", "training.cli", "fit_command", "fit a surrogate on a trace file"),
        ("eval", "training.cli", "eval_command", "evaluate an artifact on labelled data"),
    ]:
        delegated = sub.add_parser(name, help=text, add_help=False)
        delegated.add_argument("rest", nargs=argparse.REMAINDER)
        delegated.set_defaults(run=_delegate(module, function))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except ConfigError as exc:
        print(f"tracer: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
