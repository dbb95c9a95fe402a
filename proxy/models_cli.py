"""`tracer models list | rollback | pin | unpin`: the served versions, as the proxy sees them."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import TYPE_CHECKING, Any

from .config import Config, load_config

if TYPE_CHECKING:
    from .models import ModelStore


def no_store(config: Config) -> str | None:
    """Why a read-only verb cannot read the store, in one line; None when it can try."""
    from .paths import sqlite_file

    config.require_env("store")
    file = sqlite_file(config.store.url)
    if file is not None and not file.is_file():
        return f"no store at {file} yet (nothing has been served with this config)"
    return None


def _model_store(config: Config) -> ModelStore:
    """The versions as the proxy sees them: in the store, after importing what the folder
    holds and the store lacks (as a proxy's start would); the folder alone when there is
    no store yet. Raises ModelsUnavailable when the store does not answer."""
    from .models import ModelStore
    from .shared_models import SharedModelStore, model_store

    if no_store(config) is not None:
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
    outcomes = _refit_outcomes(config)
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
                    "refit": outcomes.get((task.name, version)),
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
    print(f"  {'task':<24} {'version':<7} {'status':<9} {'refit':<10} {'created':<26} figures")
    for r in rows:
        mark = "P" if r["pinned"] else "*" if r["serving"] else " "
        figures = (
            f"coverage {r['calibration_coverage']:.3f} agreement {r['calibration_agreement']:.3f}"
            if isinstance(r["calibration_coverage"], float)
            and isinstance(r["calibration_agreement"], float)
            else (r["reason"] or "")
        )
        when = r["created_at"] or ""
        refit = r["refit"] or "-"
        print(
            f"{mark} {r['task']:<24} {r['version']:<7} {r['status']:<9} {refit:<10} {when:<26} "
            f"{figures}"
        )
    return 0


def _refit_outcomes(config: Config) -> dict[tuple[str, str], str]:
    """What the refit loop made of each version (a `deployed` artifact may never have
    served: `not_better`, `rejected`, ...); none from a store not created yet."""
    from sqlalchemy.exc import SQLAlchemyError

    from . import store

    if no_store(config) is not None:
        return {}

    async def read() -> dict[tuple[str, str], str]:
        engine = store.create_engine(config.store.url)
        try:
            return {
                (task.name, version): outcome
                for task in config.tasks
                for version, outcome in (await store.refit_outcomes(engine, task.name)).items()
            }
        except SQLAlchemyError:  # a store without its tables yet: nothing was fitted
            return {}
        finally:
            await engine.dispose()

    return asyncio.run(read())


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


def add_models_parser(sub: Any) -> None:
    """`tracer models ...`."""
    models = sub.add_parser("models", help="show or change the served model versions")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    listing = models_sub.add_parser(
        "list",
        help="every version of every task and what the refit loop made of it; * marks the "
        "served one, P a pinned one",
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
