"""The `tracer` command.

Heavy imports (LiteLLM, uvicorn, scikit-learn) happen inside the subcommand that
needs them, so `tracer --help` and `tracer eval` start quickly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .config import Config, ConfigError, is_loopback, load_config
from .models_cli import add_models_parser, no_store
from .operator_cli import add_import_parser, add_status_parser


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app
    from .server import ProxyServer, uvicorn_options

    config = load_config(args.config)
    config.require_env()  # every os.environ/ reference the server reads, named if unset
    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    if not config.server.api_keys and not is_loopback(host):
        raise ConfigError(f"--host {host} is not a loopback address and server.api_keys is empty")
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    workers = args.workers if args.workers is not None else config.server.workers
    if workers < 1:
        raise ConfigError(f"--workers {workers}: give at least 1")
    if workers > 1:  # each worker process reads the config and builds its app itself
        from .workers import serve_workers

        serve_workers(
            args.config, host=host, port=port, workers=workers,
            keep_alive_s=config.server.keep_alive_seconds,
            read_timeout_s=config.server.read_timeout_seconds,
            log_level=args.log_level, access_log=args.access_log,
        )  # fmt: skip
        return 0
    config.apply_environment()
    if config.server.upstream_client == "litellm":
        from .litellm_config import apply_callbacks

        apply_callbacks(config.litellm_settings, config.base_dir)
    options = uvicorn_options(
        keep_alive_s=config.server.keep_alive_seconds,
        read_timeout_s=config.server.read_timeout_seconds,
        log_level=args.log_level,
        access_log=args.access_log,
    )
    from .reload import reload_modes

    server = ProxyServer(uvicorn.Config(create_app(config), host=host, port=port, **options))
    server.on_hangup = lambda: reload_modes(Path(args.config), config)
    server.run()
    return 0


def _store_failure(config: Config, exc: Exception) -> str:
    from .paths import sqlite_file

    where = sqlite_file(config.store.url) or "store.url"
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    if "no such table" in text:
        return f"the store at {where} holds no traces yet (nothing has been served with it)"
    return f"cannot read the store at {where}: {text}"


def _export(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from . import store

    config = load_config(args.config)
    if config.task(args.task) is None:
        names = ", ".join(t.name for t in config.tasks) or "none"
        print(
            f"tracer: no task named {args.task!r} in {args.config} (tasks: {names})",
            file=sys.stderr,
        )
        return 2
    if (why := no_store(config)) is not None:
        print(f"tracer: {why}", file=sys.stderr)
        return 1

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
                    "source": row["source"],
                    "raw_output": row["raw_output"],
                    "cost_usd": row["cost_usd"],
                    "created_at": row["created_at"].isoformat() if row["created_at"] else None,
                }
                sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
                n += 1
        except (SQLAlchemyError, OSError) as exc:
            print(f"tracer: {_store_failure(config, exc)}", file=sys.stderr)
            return 1
        finally:
            await engine.dispose()
        print(f"tracer: exported {n} traces of task {args.task}", file=sys.stderr)
        return 0

    return asyncio.run(run())


def _run_delegated(name: str, rest: list[str]) -> int:
    import importlib

    module, function, _ = DELEGATED[name]
    return int(getattr(importlib.import_module(module), function)(rest))


# Subcommands with parsers of their own: everything after the name is theirs.
DELEGATED = {
    "fit": ("training.cli", "fit_command", "fit a surrogate on a trace file"),
    "eval": ("training.cli", "eval_command", "evaluate an artifact on labelled data"),
    "report": ("training.report", "report_command", "explain what a model handles and defers"),
    "scan": ("training.scan", "scan_command", "what a surrogate would give on a trace file"),
    "demo": ("proxy.sim.demo", "demo_command", "watch the flywheel turn on a simulated teacher"),
    "sim-teacher": (
        "proxy.sim.cli",
        "sim_teacher_command",
        "a simulated OpenAI-compatible teacher on loopback, answering from a data set",
    ),
}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tracer-proxy")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tracer",
        description="An OpenAI-compatible proxy that learns a parity-gated surrogate "
        "for classification calls.",
    )
    parser.add_argument("--version", action="version", version=f"tracer {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", required=True, help="YAML configuration file")
    serve.add_argument("--host", help="override server.host")
    serve.add_argument("--port", type=int, help="override server.port")
    serve.add_argument(
        "--workers", type=int, metavar="N", help="worker processes on the port (server.workers)"
    )
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
    add_import_parser(traces_sub)

    add_status_parser(sub)
    add_models_parser(sub)

    for name, (_, _, text) in DELEGATED.items():  # listed for --help; main() runs them
        sub.add_parser(name, help=text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in DELEGATED:  # argparse would claim their leading options
            code = _run_delegated(argv[0], argv[1:])
        else:
            args = build_parser().parse_args(argv)
            code = int(args.run(args))
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's last flush
        return code
    except ConfigError as exc:
        print(f"tracer: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`tracer models list --json | head`): stop quietly, as a
        # Unix tool does, and keep the interpreter's last flush from raising again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
