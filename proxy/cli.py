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
from typing import TYPE_CHECKING

from .config import Config, ConfigError, is_loopback, load_config
from .operator_cli import add_import_parser, add_status_parser

if TYPE_CHECKING:
    from .models import ModelStore


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


def _no_store(config: Config) -> str | None:
    """Why a read-only verb cannot read the store, in one line; None when it can try."""
    from .paths import sqlite_file

    config.require_env("store")
    file = sqlite_file(config.store.url)
    if file is not None and not file.is_file():
        return f"no store at {file} yet (nothing has been served with this config)"
    return None


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
    if (why := _no_store(config)) is not None:
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


def _model_store(config: Config) -> ModelStore:
    """The versions as the proxy sees them: in the store, after importing what the folder
    holds and the store lacks (as a proxy's start would); the folder alone when there is
    no store yet. Raises ModelsUnavailable when the store does not answer."""
    from .models import ModelStore
    from .shared_models import SharedModelStore, model_store

    if _no_store(config) is not None:
        return ModelStore(config.artifacts.dir)
    models = model_store(config.artifacts.dir, config.store.url)
    if isinstance(models, SharedModelStore):
        models.sync([t.name for t in config.tasks])
        try:
            models.reload()
        except BaseException:
            models.close()
            raise
    return models


def _models_list(args: argparse.Namespace) -> int:
    from .models import ModelsUnavailable

    config = load_config(args.config)
    config.require_env("artifacts", "tasks")
    try:
        models = _model_store(config)
    except ModelsUnavailable as exc:
        print(f"tracer: {exc}", file=sys.stderr)
        return 1
    rows = []
    for task in config.tasks:
        current = models.current(task.name)
        for version in models.versions(task.name):
            manifest = models.manifest(task.name, version)
            cal = manifest.calibration if manifest is not None else None
            refusal = manifest.refusal if manifest is not None else None
            rows.append(
                {
                    "task": task.name,
                    "version": version,
                    "serving": version == current,
                    "pinned": version == current and models.pinned(task.name),
                    "status": manifest.status if manifest is not None else "incomplete",
                    "created_at": manifest.created_at if manifest is not None else None,
                    "threshold": manifest.threshold if manifest is not None else None,
                    "calibration_coverage": cal.coverage if cal is not None else None,
                    "calibration_agreement": cal.agreement if cal is not None else None,
                    "reason": refusal.reason if refusal is not None else None,
                }
            )
    models.close()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no models yet under {config.artifacts.dir}")
        return 0
    print(f"  {'task':<24} {'version':<7} {'status':<9} {'created':<26} figures")
    for r in rows:
        mark = "P" if r["pinned"] else "*" if r["serving"] else " "
        figures = (
            f"coverage {r['calibration_coverage']:.3f} agreement {r['calibration_agreement']:.3f}"
            if isinstance(r["calibration_coverage"], float)
            and isinstance(r["calibration_agreement"], float)
            else (r["reason"] or "")
        )
        when = r["created_at"] or ""
        print(f"{mark} {r['task']:<24} {r['version']:<7} {r['status']:<9} {when:<26} {figures}")
    return 0


def _models_change(args: argparse.Namespace) -> int:
    """`models rollback`, `pin` and `unpin`: one write to where the pointer lives."""
    from router import ArtifactError

    from .models import ModelsUnavailable

    config = load_config(args.config)
    config.require_env("artifacts")
    if config.task(args.task) is None:
        print(f"tracer: no task named {args.task!r} in {args.config}", file=sys.stderr)
        return 2
    try:
        models = _model_store(config)
        try:
            if args.models_command == "unpin":
                version = models.unpin(args.task)
            elif args.models_command == "pin":
                version = models.pin(args.task, args.version)
            else:
                version = models.rollback(args.task, args.to)
        finally:
            models.close()
    except (ArtifactError, ModelsUnavailable) as exc:
        print(f"tracer: {exc}", file=sys.stderr)
        return 1
    if args.models_command == "unpin":
        print(f"task {args.task} is not pinned (it serves {version or 'no version'}): refits "
              "and candidates may move it again")  # fmt: skip
        return 0
    print(f"task {args.task} now serves {version}, pinned until `tracer models unpin "
          f"{args.task}`; running proxies pick it up within seconds")  # fmt: skip
    return 0


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

    models = sub.add_parser("models", help="show or change the served model versions")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    listing = models_sub.add_parser(
        "list", help="every version of every task; * marks the served one, P a pinned one"
    )
    listing.add_argument("--config", required=True)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(run=_models_list)
    rollback = models_sub.add_parser(
        "rollback", help="serve the newest certified version older than the served one (or "
        "--to), pinned"
    )  # fmt: skip
    rollback.add_argument("task")
    rollback.add_argument("--config", required=True)
    rollback.add_argument("--to", help="the version to serve, e.g. v0002")
    pin = models_sub.add_parser("pin", help="serve a version (default: the served one) and "
                                "hold it: refits wait as candidates until unpin")  # fmt: skip
    pin.add_argument("task")
    pin.add_argument("version", nargs="?")
    pin.add_argument("--config", required=True)
    unpin = models_sub.add_parser("unpin", help="let refits and candidates move the task again")
    unpin.add_argument("task")
    unpin.add_argument("--config", required=True)
    for verb in (rollback, pin, unpin):
        verb.set_defaults(run=_models_change)

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
