"""`kill -HUP` on a running `tracer serve`: re-read the config file, apply what can change.

A task's `mode` (shadow or serve) and its sampling (`audit_rate`, `audit_boost`,
`probation_boost`) change in place: the next request is routed and sampled by the new
values, and everything learned (traces, versions, live checks) stays. Sampling may
change at any time because each draw stays independent of the request and of any
model's decision; only how many draws there are changes. Any other difference is named
in the log as needing a restart, because it changes what was certified or how the
process is wired. With `--workers N`, uvicorn's supervisor answers SIGHUP by restarting
its workers one by one, each reading the file anew.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .config import Config, ConfigError, load_config

log = logging.getLogger("tracer.config")

RELOADED = ("mode", "audit_rate", "audit_boost", "probation_boost")  # applied in place


def reload_modes(path: Path, running: Config) -> list[str]:
    """Apply the file's task modes and sampling to the running config; what changed, in
    words."""
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
        for name in RELOADED:
            before, after = getattr(task, name), getattr(new, name)
            if after != before:
                done.append(f"task {task.name}: {name} {before} -> {after}")
                setattr(task, name, after)
        other = sorted(
            name for name in type(task).model_fields
            if name not in RELOADED and getattr(new, name) != getattr(task, name)
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
        log.info("reload: %s read; no mode or sampling changed", path)
    return done
