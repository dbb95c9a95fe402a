"""`kill -HUP` on a running `tracer serve`: re-read the config file, apply what can change.

A task's `mode` (shadow or serve) changes in place: the next request is routed by the
new mode, and everything learned (traces, versions, live checks) stays. Any other
difference is named in the log as needing a restart, because it changes what was
certified or how the process is wired. With `--workers N`, uvicorn's supervisor answers
SIGHUP by restarting its workers one by one, each reading the file anew.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .config import Config, ConfigError, load_config

log = logging.getLogger("tracer.config")


def reload_modes(path: Path, running: Config) -> list[str]:
    """Apply the file's task modes to the running config; what changed, in words."""
    try:
        fresh = load_config(path)
    except (ConfigError, OSError) as exc:
        log.warning("reload: %s; the running config stays", exc)
        return []
    done: list[str] = []
    for task in running.tasks:
        new = fresh.task(task.name)
        if new is None:
            log.warning("reload: task %s is gone from %s; a restart removes it", task.name, path)
            continue
        if new.mode != task.mode:
            done.append(f"task {task.name}: mode {task.mode} -> {new.mode}")
            task.mode = new.mode
        other = sorted(
            name for name in type(task).model_fields
            if name != "mode" and getattr(new, name) != getattr(task, name)
        )  # fmt: skip
        if other:
            log.warning("reload: task %s: %s changed; a restart applies it", task.name,
                        ", ".join(other))  # fmt: skip
    added = sorted({t.name for t in fresh.tasks} - {t.name for t in running.tasks})
    if added:
        log.warning("reload: new tasks %s; a restart adds them", ", ".join(added))
    for line in done:
        log.info("reload: %s", line)
    if not done:
        log.info("reload: %s read; no mode changed", path)
    return done
