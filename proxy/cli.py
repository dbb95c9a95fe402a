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
    from .server import ProxyServer, uvicorn_options

    config = load_config(args.config)
    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    if not config.server.api_keys and not is_loopback(host):
        raise ConfigError(f"--host {host} is not a loopback address and server.api_keys is empty")
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    options = uvicorn_options(
        keep_alive_s=config.server.keep_alive_seconds,
        read_timeout_s=config.server.read_timeout_seconds,
        log_level=args.log_level,
        access_log=args.access_log,
    )
    ProxyServer(uvicorn.Config(create_app(config), host=host, port=port, **options)).run()
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
                    "source": row["source"],
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


def _models_list(args: argparse.Namespace) -> int:
    from .models import ModelStore

    config = load_config(args.config)
    models = ModelStore(config.artifacts.dir)
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
                    "status": manifest.status if manifest is not None else "incomplete",
                    "created_at": manifest.created_at if manifest is not None else None,
                    "threshold": manifest.threshold if manifest is not None else None,
                    "calibration_coverage": cal.coverage if cal is not None else None,
                    "calibration_agreement": cal.agreement if cal is not None else None,
                    "reason": refusal.reason if refusal is not None else None,
                }
            )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no models yet under {config.artifacts.dir}")
        return 0
    for r in rows:
        mark = "*" if r["serving"] else " "
        figures = (
            f"coverage {r['calibration_coverage']:.3f} agreement {r['calibration_agreement']:.3f}"
            if isinstance(r["calibration_coverage"], float)
            and isinstance(r["calibration_agreement"], float)
            else (r["reason"] or "")
        )
        when = r["created_at"] or ""
        print(f"{mark} {r['task']:<24} {r['version']:<7} {r['status']:<9} {when:<26} {figures}")
    return 0


def _models_rollback(args: argparse.Namespace) -> int:
    from router import ArtifactError

    from .models import ModelStore

    config = load_config(args.config)
    if config.task(args.task) is None:
        print(f"tracer: no task named {args.task!r} in {args.config}", file=sys.stderr)
        return 2
    try:
        version = ModelStore(config.artifacts.dir).rollback(args.task, args.to)
    except ArtifactError as exc:
        print(f"tracer: {exc}", file=sys.stderr)
        return 1
    print(f"task {args.task} now serves {version}; running proxies pick it up within seconds")
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
    "demo": ("proxy.sim.demo", "demo_command", "watch the flywheel turn on a simulated teacher"),
    "sim-teacher": (
        "proxy.sim.cli",
        "sim_teacher_command",
        "a simulated OpenAI-compatible teacher on loopback, answering from a data set",
    ),
}


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

    models = sub.add_parser("models", help="show or change the served model versions")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    listing = models_sub.add_parser(
        "list", help="every version of every task; * marks the served one"
    )
    listing.add_argument("--config", required=True)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(run=_models_list)
    rollback = models_sub.add_parser("rollback", help="serve the previous (or a given) version")
    rollback.add_argument("task")
    rollback.add_argument("--config", required=True)
    rollback.add_argument("--to", help="the version to serve, e.g. v0002 (default: the previous)")
    rollback.set_defaults(run=_models_rollback)

    for name, (_, _, text) in DELEGATED.items():  # listed for --help; main() runs them
        sub.add_parser(name, help=text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in DELEGATED:  # argparse would claim their leading options
            return _run_delegated(argv[0], argv[1:])
        args = build_parser().parse_args(argv)
        return int(args.run(args))
    except ConfigError as exc:
        print(f"tracer: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
