"""Served models: versioned artifact folders on disk and the live router of each task.

On disk, for each task::

    <artifacts.dir>/<task>/versions/v0001/   an artifact (or a refusal) from one fit
    <artifacts.dir>/<task>/current.json      {"version": "v0003", "previous": "v0002", ...}

The pointer is replaced by rename, so every reader sees either the old or the new
version, never half of one. Every worker polls the pointer and swaps its in-memory
router by reassigning one reference: requests already running keep the router
they started with, so a swap drops nothing.

This class is the folder alone (the CLI's offline verbs, tests, benchmarks). The proxy
serves from `proxy.shared_models.SharedModelStore`, which keeps versions and pointers in
the store and this folder as its cache; `sync`, `ensure` and `close` are its hooks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from router import ArtifactError, Decision, Router
from router.manifest import Manifest, read_manifest

log = logging.getLogger("tracer.models")

POINTER = "current.json"
_VERSION = re.compile(r"^v(\d+)$")
# Above this median a prediction goes to a worker thread, off the event loop. The
# issue's line is "about a millisecond"; a TF-IDF model takes 0.4-0.5 ms, so a lower
# budget sent it to a thread whenever the cores were busy at load, for no gain.
INLINE_BUDGET_S = 0.001
# ... and so does any input longer than this: the embedders read at most
# router.text.MAX_INPUT_CHARS of it, but even that is several times a typical request.
INLINE_MAX_CHARS = 1000


class ModelsUnavailable(RuntimeError):
    """The store cannot give a version's files now (unreachable, not published yet): the
    task keeps what it serves and the next poll tries again."""


class ModelStore:
    """The artifact folders of every task, and which version of each is served."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._warned: dict[str, tuple[int, int]] = {}  # pointer file -> state warned about

    def task_dir(self, task: str) -> Path:
        return self.root / task

    def versions(self, task: str) -> list[str]:
        folder = self.task_dir(task) / "versions"
        if not folder.is_dir():
            return []
        found = [p.name for p in folder.iterdir() if p.is_dir() and _VERSION.match(p.name)]
        return sorted(found, key=lambda v: int(v[1:]))

    def version_dir(self, task: str, version: str) -> Path:
        return self.task_dir(task) / "versions" / version

    def next_version(self, task: str) -> str:
        existing = self.versions(task)
        return f"v{int(existing[-1][1:]) + 1 if existing else 1:04d}"

    def pointer(self, task: str) -> dict[str, Any] | None:
        """The task's pointer, or None when there is none or it cannot be trusted.

        A pointer that is not UTF-8 JSON, or names anything but a version folder of this
        task (``../elsewhere``, an absolute path), is ignored with one warning per
        change of the file: the task keeps what it serves, or stays on the teacher.
        """
        path = self.task_dir(task) / POINTER
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:  # ValueError: not UTF-8, not JSON
            self._warn_once(path, f"unreadable model pointer {path}: {exc}")
            return None
        version = data.get("version") if isinstance(data, dict) else None
        if not isinstance(version, str) or not _VERSION.match(version):
            self._warn_once(
                path, f"model pointer {path} names {version!r}, not a version of task {task}"
            )
            return None
        self._warned.pop(str(path), None)
        return cast(dict[str, Any], data)

    def _warn_once(self, path: Path, message: str) -> None:
        try:
            stat = path.stat()
            signature: tuple[int, int] = (stat.st_mtime_ns, stat.st_size)
        except OSError:
            signature = (0, 0)
        if self._warned.get(str(path)) != signature:
            self._warned[str(path)] = signature
            log.warning("%s; ignoring it", message)

    def current(self, task: str) -> str | None:
        pointer = self.pointer(task)
        return pointer["version"] if pointer else None

    def pinned(self, task: str) -> bool:
        """Held at its version by `tracer models pin` or a rollback: refits do not move it."""
        return bool((self.pointer(task) or {}).get("pinned"))

    def set_current(self, task: str, version: str, pinned: bool = False) -> None:
        """Point the task at a version, by atomic rename; the old one is kept for rollback."""
        if not (self.version_dir(task, version) / "manifest.json").is_file():
            raise ArtifactError(f"task {task} has no version {version}")
        previous = self.current(task)
        pointer = {
            "version": version,
            "previous": previous if previous != version else None,
            "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
            **({"pinned": True} if pinned else {}),
        }
        path = self.task_dir(task) / POINTER
        tmp = path.with_name(f".{POINTER}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(pointer) + "\n", encoding="utf-8")
        os.replace(tmp, path)

    def manifest(self, task: str, version: str) -> Manifest | None:
        """A version's manifest, typed (refusals included); None when missing or broken."""
        try:
            return read_manifest(self.version_dir(task, version), allow_refused=True)
        except ArtifactError:
            return None

    def latest_report(self, task: str, name: str = "report.html") -> Path | None:
        """The newest version's report (a refusal's too: it says why it was refused)."""
        for version in reversed(self.versions(task)):
            path = self.version_dir(task, version) / name
            if path.is_file():
                return path
        return None

    def sync(self, tasks: Sequence[str]) -> None:
        """Catch up with where versions are kept, before a poll follows the pointers."""

    def ensure(self, task: str, version: str) -> Path:
        """The folder of a version, ready to load."""
        return self.version_dir(task, version)

    def close(self) -> None:
        """Let go of what the store holds open."""

    def rollback(self, task: str, to: str | None = None) -> str:
        """Serve ``to``, or else the newest certified version older than the served one,
        and pin it: run twice, it goes two versions back, and no refit undoes it."""
        current = self.current(task)
        if to is None:
            older = [
                v for v in self.versions(task)
                if current is not None and int(v[1:]) < int(current[1:])
            ]  # fmt: skip
            to = next((v for v in reversed(older) if self._deployable(task, v)), None)
            if to is None:
                raise ArtifactError(f"task {task} has no older certified version to roll back to")
        self.pin(task, to)
        return to

    def pin(self, task: str, version: str | None = None) -> str:
        """Serve `version` (default: the served one) and hold it until `unpin`."""
        version = version or self.current(task)
        if version is None:
            raise ArtifactError(f"task {task} serves no version to pin")
        if not self._deployable(task, version):
            raise ArtifactError(f"version {version} of task {task} is not a deployable model")
        Router.load(self.version_dir(task, version))  # verify before serving it
        self.set_current(task, version, pinned=True)
        return version

    def unpin(self, task: str) -> str | None:
        """Let refits and promotions move the task again; the version it serves stays."""
        version = self.current(task)
        if version is not None and self.pinned(task):
            self.set_current(task, version)
        return version

    def _deployable(self, task: str, version: str) -> bool:
        manifest = self.manifest(task, version)
        return manifest is not None and manifest.deployed


@dataclass(frozen=True)
class LiveModel:
    """One loaded version, and how to call it without stalling the event loop."""

    version: str
    router: Router
    inline: bool

    @property
    def manifest(self) -> Manifest:
        return self.router.manifest

    @property
    def certified_coverage(self) -> float:
        return self.router.manifest.certified_coverage

    async def predict(self, text: str) -> Decision:
        if self.inline and len(text) <= INLINE_MAX_CHARS:
            return self.router.predict(text)
        return await asyncio.to_thread(self.router.predict, text)


_PROBES = ("where is my card", "how do i reset my password", "a longer question " * 8)


def _measure_inline(router: Router) -> bool:
    """Time a few predictions: a fast model answers on the loop, a slow one in a thread."""
    router.predict_batch(list(_PROBES))
    timings = []
    for text in _PROBES * 7:
        started = time.perf_counter()
        router.predict(text)
        timings.append(time.perf_counter() - started)
    timings.sort()
    return timings[len(timings) // 2] <= INLINE_BUDGET_S


class LiveModels:
    """The router each task serves now; `refresh` follows the pointers on disk."""

    def __init__(
        self,
        store: ModelStore,
        tasks: Sequence[str],
        on_swap: Callable[[str, LiveModel | None, LiveModel], None] | None = None,
    ) -> None:
        self.store = store
        self.tasks = list(tasks)
        self.on_swap = on_swap
        self._live: dict[str, LiveModel] = {}
        self._unservable: dict[str, str] = {}  # task -> a pointed-to version that failed to load
        self._waiting: dict[str, str] = {}  # task -> why its pointed-to version cannot load yet
        # One load at a time: a deploy and the poll that both see a new pointer would
        # otherwise both load it and swap twice, and the second swap would wipe the
        # live checks the first one's version had gathered in between.
        self._loading = threading.Lock()

    def get(self, task: str) -> LiveModel | None:
        return self._live.get(task)

    def refresh_task(self, task: str) -> LiveModel | None:
        """Load the pointed-to version if it is not the one served. Blocking: call off-loop."""
        with self._loading:
            return self._refresh_task(task)

    def _refresh_task(self, task: str) -> LiveModel | None:
        version = self.store.current(task)
        live = self._live.get(task)
        if version is None or (live is not None and live.version == version):
            return live
        if self._unservable.get(task) == version:
            return live  # already refused and logged; tried again when the pointer moves
        try:
            router = Router.load(self.store.ensure(task, version))
        except ModelsUnavailable as exc:
            if self._waiting.get(task) != str(exc):
                kept = live.version if live else "the teacher"
                log.warning("task %s: version %s cannot load yet, keeping %s: %s",
                            task, version, kept, exc)  # fmt: skip
            self._waiting[task] = str(exc)
            return live
        except ArtifactError as exc:
            self._unservable[task] = version
            log.error("task %s: cannot serve version %s, keeping %s: %s",
                      task, version, live.version if live else "the teacher", exc)  # fmt: skip
            return live
        self._unservable.pop(task, None)
        self._waiting.pop(task, None)
        fresh = LiveModel(version, router, _measure_inline(router))
        self._live[task] = fresh  # the swap: one reference, atomic for readers
        if self.on_swap is not None:
            self.on_swap(task, live, fresh)
        log.info("task %s: now serving model %s", task, version)
        return fresh

    def refresh(self) -> None:
        try:
            self.store.sync(self.tasks)
        except Exception:  # never let the poll die: the pointers as last read still hold
            log.exception("model versions: sync failed")
        for task in self.tasks:
            self.refresh_task(task)
