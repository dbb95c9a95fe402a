"""The store's side of `SharedModelStore`: versions reserved, published, fetched, pointed at.

`shared_models` says how the pieces fit; this module reads and writes them.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from router import ArtifactError
from router.manifest import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_NAME,
    Manifest,
    manifest_digest,
    read_manifest,
)

from .model_files import (
    MIRROR_KEY,
    Checksums,
    complete,
    files_of,
    read_pointer_file,
    safe_name,
    signature,
    temporary,
    write_pointer_file,
)
from .models import POINTER, ModelStore, ModelsUnavailable
from .store import versions as rows
from .store.bridge import BlockingStore
from .store.versions import PUBLISHED, RESERVED, FileInfo, Pointer, VersionInfo

log = logging.getLogger("tracer.models")

T = TypeVar("T")
UNAVAILABLE = (SQLAlchemyError, OSError, TimeoutError)


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


class StoreModels(ModelStore):
    """`ModelStore` with the versions and the pointer in the store at `url`."""

    def __init__(self, root: Path, url: str, holder: str | None = None) -> None:
        super().__init__(root)
        self.db = BlockingStore(url)
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.checksums = Checksums()
        self._lock = threading.RLock()
        self._pointers: dict[str, Pointer] | None = None  # None: not read yet
        self._versions: dict[str, dict[str, VersionInfo]] = {}
        self._manifests: dict[tuple[str, str], Manifest | None] = {}
        self._indexes: dict[tuple[str, str], dict[str, FileInfo]] = {}
        self._reserved: set[tuple[str, str]] = set()  # numbers this store's fits hold
        self._finished: set[tuple[str, str]] = set()  # ...whose fits ended, to publish
        self._seen: dict[str, tuple[int, int, int] | None] = {}  # pointer files looked at
        self._failing: str | None = None

    def _db(self, fn: Callable[[AsyncEngine], Awaitable[T]]) -> T:
        try:
            return self.db.run(fn)
        except UNAVAILABLE as exc:
            raise ModelsUnavailable(
                f"the store does not answer: {type(exc).__name__}: {exc}"
            ) from exc

    def close(self) -> None:
        self.db.close()

    # -- what the store holds ---------------------------------------------------------------
    def reload(self) -> None:
        pointers, versions = self._db(rows.snapshot)
        with self._lock:
            self._pointers, self._versions = pointers, versions

    def _pointer_row(self, task: str) -> Pointer | None:
        if self._pointers is None:
            self.reload()
        return (self._pointers or {}).get(task)

    def _info(self, task: str, version: str) -> VersionInfo | None:
        if self._pointers is None:
            self.reload()
        return self._versions.get(task, {}).get(version)

    def _published(self, task: str, version: str) -> bool:
        info = self._info(task, version)
        return info is not None and info.state == PUBLISHED

    def _local(self, task: str, version: str) -> Path:
        return super().version_dir(task, version)

    def pointer(self, task: str) -> dict[str, Any] | None:
        row = self._pointer_row(task)
        if row is None:
            return None
        return {
            "version": row.version,
            "previous": row.previous,
            "updated_at": _iso(row.updated_at),
            **({"pinned": True} if row.pinned else {}),
        }

    def versions(self, task: str) -> list[str]:
        if self._pointers is None:
            self.reload()
        names = {v for v, i in self._versions.get(task, {}).items() if i.state == PUBLISHED}
        names |= {v for v in super().versions(task) if complete(self._local(task, v))}
        return sorted(names, key=lambda v: int(v[1:]))

    def manifest(self, task: str, version: str) -> Manifest | None:
        """The local manifest, else the store's. The first read after this store's fit of
        `version` ended publishes it, so a candidate is in the store before it is recorded."""
        local = self._local(task, version)
        key = (task, version)
        if complete(local):
            if key in self._reserved:  # this store's fit of it has ended
                with self._lock:
                    self._reserved.discard(key)
                    self._finished.add(key)
            if key in self._finished:
                self._publish_quietly(task, version)
            try:
                return read_manifest(local, allow_refused=True)
            except ArtifactError:
                return None
        if key not in self._manifests:
            try:
                text = self._db(lambda e: rows.manifest_text(e, task, version))
            except ModelsUnavailable:
                return None
            parsed = _parse_manifest(text)
            if parsed is None:
                return None  # not published yet, perhaps: asked again next time
            self._manifests[key] = parsed
        return self._manifests[key]

    # -- versions: reserve, publish, fetch ------------------------------------------------------
    def next_version(self, task: str) -> str:
        """Reserve the next number in the store (unique per task: replicas never share one)."""
        local = [int(v[1:]) for v in super().versions(task)]
        version, number = self._db(
            lambda e: rows.reserve(e, task, self.holder, max(local, default=0) + 1)
        )
        with self._lock:
            self._reserved.add((task, version))
            self._versions.setdefault(task, {})[version] = VersionInfo(
                version, number, RESERVED, None, self.holder
            )
        return version

    def publish(self, task: str, version: str) -> bool:
        """Write a finished local version's files to the store; False if it holds them already."""
        local = self._local(task, version)
        if not complete(local):
            raise ArtifactError(f"version {version} of task {task} has no manifest in {local}")
        text = (local / MANIFEST_NAME).read_text(encoding="utf-8")
        raw = _loads(text)
        status = raw.get("status") if isinstance(raw, dict) else None
        files = [self.checksums.local_file(name, path) for name, path in files_of(local)]
        number = int(version[1:])
        done = self._db(
            lambda e: rows.publish(
                e, task, version, number, self.holder, text, str(status) if status else None, files
            )
        )
        with self._lock:
            self._reserved.discard((task, version))
            self._finished.discard((task, version))
            if done:
                self._versions.setdefault(task, {})[version] = VersionInfo(
                    version, number, PUBLISHED, str(status) if status else None, self.holder
                )
                self._indexes[(task, version)] = {f.name: FileInfo(f.size, f.sha256) for f in files}
        if done:
            log.info(
                "task %s: version %s published to the store (%d files)", task, version, len(files)
            )
        return done

    def _publish_quietly(self, task: str, version: str) -> None:
        try:
            self.publish(task, version)
        except (ModelsUnavailable, OSError) as exc:
            log.warning("task %s: version %s is not published yet (%s); retrying at the next poll",
                        task, version, exc)  # fmt: skip

    def _index(self, task: str, version: str, fresh: bool = False) -> dict[str, FileInfo]:
        key = (task, version)
        if fresh or key not in self._indexes:
            index = self._db(lambda e: rows.file_index(e, task, version))
            if not index:
                return {}
            with self._lock:
                self._indexes[key] = index
        return self._indexes[key]

    def ensure(self, task: str, version: str) -> Path:
        """The version's folder, complete and matching the store's checksums: fetched first
        where a file is missing or differs. ArtifactError when the store's own copy fails
        its checksum (refused); ModelsUnavailable when the store cannot tell now."""
        local = self._local(task, version)
        index = self._index(task, version)
        if not index:
            if not self._published(task, version):
                self.reload()
            info = self._info(task, version)
            if info is not None and info.state == RESERVED:
                raise ModelsUnavailable(f"version {version} of task {task} is not published yet")
            if complete(local) and info is None:
                return local  # on disk only: published by the next poll
            raise ArtifactError(f"the store holds no files of version {version} of task {task}")
        for name in sorted(index, key=lambda n: n == MANIFEST_NAME):  # the manifest last
            self._fetch(task, version, name, index[name], local)
        return local

    def _fetch(self, task: str, version: str, name: str, info: FileInfo, local: Path) -> Path:
        if not safe_name(name):
            raise ArtifactError(f"the store lists an unsafe file name {name!r} in {task} {version}")
        target = local / name
        if self.checksums.intact(target, info):
            return target
        if target.exists():
            log.warning("task %s: the cached %s of version %s does not match the store's "
                        "checksum; fetching it again", task, name, version)  # fmt: skip
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary(target)
        try:
            digest = self._db(lambda e: rows.read_file(e, task, version, name, tmp))
            if digest != info.sha256 or tmp.stat().st_size != info.size:
                raise ArtifactError(
                    f"the store's copy of {name} of version {version} of task {task} fails "
                    f"its checksum (sha256 {digest}, expected {info.sha256}): refused"
                )
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return target

    def version_dir(self, task: str, version: str) -> Path:
        """The local folder; for a version the store holds, complete and verified first."""
        local = self._local(task, version)
        if (task, version) in self._reserved:
            return local  # being fitted here
        if not self._published(task, version) and not complete(local):
            self.reload()  # published since the last poll?
        if not self._published(task, version):
            return local
        try:
            return self.ensure(task, version)
        except ModelsUnavailable as exc:
            log.warning("task %s: %s", task, exc)
            return local

    def latest_report(self, task: str, name: str = "report.html") -> Path | None:
        for version in reversed(self.versions(task)):
            local = self._local(task, version)
            if (local / name).is_file():
                return local / name
            if self._published(task, version):
                try:
                    info = self._index(task, version).get(name)
                    if info is None:  # added after it was published?
                        info = self._index(task, version, fresh=True).get(name)
                    if info is not None:
                        return self._fetch(task, version, name, info, local)
                except (ModelsUnavailable, ArtifactError) as exc:
                    log.warning("task %s: %s", task, exc)
        return None

    # -- the pointer -----------------------------------------------------------------------------
    def set_current(self, task: str, version: str, pinned: bool = False) -> None:
        """Point the task at a version: one row in the store (published first if need be)."""
        if complete(self._local(task, version)) and not self._published(task, version):
            self.publish(task, version)
        if not self._published(task, version):
            self.reload()
            if not self._published(task, version):
                raise ArtifactError(f"task {task} has no version {version}")
        row = self._db(lambda e: rows.set_pointer(e, task, version, self.holder, pinned))
        with self._lock:
            if self._pointers is None:
                self._pointers = {}
            self._pointers[task] = row
        self._mirror(task)

    def rollback(self, task: str, to: str | None = None) -> str:
        self.reload()
        return super().rollback(task, to)

    def _mirror(self, task: str) -> None:
        row = self._pointer_row(task)
        if row is None:
            return
        path = self.task_dir(task) / POINTER
        data = read_pointer_file(path)
        wanted = {
            "version": row.version,
            "previous": row.previous,
            "updated_at": _iso(row.updated_at),
            **({"pinned": True} if row.pinned else {}),
            MIRROR_KEY: row.updated_at,
        }
        if data == wanted:
            return
        write_pointer_file(path, wanted)
        self._seen[task] = signature(path)


def _loads(text: str | None) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def _parse_manifest(text: str | None) -> Manifest | None:
    """A manifest kept in the store, checked as `read_manifest` checks a file's."""
    raw = _loads(text)
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        return None
    if raw.get("format_version") != FORMAT_VERSION:
        return None
    if raw.get("manifest_sha256") != manifest_digest(raw):
        return None
    try:
        return Manifest.parse(raw)
    except ArtifactError:
        return None
