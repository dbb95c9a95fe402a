"""Model versions in the store, shared by every worker and replica; the folder is a cache.

The store holds, for each task, its versions (`model_versions`: a number reserved by a
fit, then the manifest), their files (`model_files`, with each file's size and sha256)
and the pointer (`model_pointers`, one row: serving another version is one update).
`artifacts.dir` keeps each replica's copy, in the layout it always had::

    <artifacts.dir>/<task>/versions/v0001/   fetched from the store, or written by a fit here
    <artifacts.dir>/<task>/current.json      a copy of the store's pointer, for readers of files

- **Publishing.** A fit here writes its folder under a number reserved in the store;
  when it ends (its manifest is read, it is served, or `publish` is called) the folder's
  files are written to the store in one transaction. Folders found on disk that the store
  does not know (an older install, a `tracer fit --out` into the folder) are published by
  the poll: a store with no model rows imports the files on first start.
- **Serving.** The poll (`sync`) reads the pointers; a version not on disk, or a cached
  file whose sha256 is not the store's, is fetched (written beside its place, checked,
  renamed in) before `Router.load`, which checks the manifest's own checksums again. A
  store copy that fails its checksum is refused: the task keeps what it serves.
- **The pointer file** is rewritten whenever the store's pointer moves, marked as a copy.
  One edited by hand (or by an older `tracer`) that is newer than the store's pointer is
  taken as an instruction and written to the store.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

from router import ArtifactError
from router.manifest import MANIFEST_NAME

from .model_files import MIRROR_KEY, complete, files_of, signature
from .models import POINTER, ModelStore, ModelsUnavailable
from .paths import sqlite_file
from .store import versions as rows
from .store.versions import PUBLISHED, RESERVED
from .store_models import UNAVAILABLE, StoreModels

log = logging.getLogger("tracer.models")

STALE_RESERVATION_S = 600.0  # a finished folder another process reserved and never published


def model_store(root: Path, url: str) -> ModelStore:
    """The store-backed model store, or the folder alone for an in-memory SQLite store."""
    if url.startswith("sqlite") and sqlite_file(url) is None:
        return ModelStore(root)
    return SharedModelStore(root, url)


class SharedModelStore(StoreModels):
    """Model versions in the store, followed by the poll (`sync`)."""

    # -- the poll --------------------------------------------------------------------------------
    def sync(self, tasks: Sequence[str]) -> None:
        """Read the store's pointers; publish finished local folders it lacks; take a pointer
        file edited by hand; rewrite the copies. A store that does not answer is logged once
        and leaves everything as it was."""
        try:
            self.reload()
            for task in tasks:
                self._import_versions(task)
                self._import_pointer(task)
                self._mirror(task)
        except (ModelsUnavailable, *UNAVAILABLE) as exc:
            message = str(exc)
            if message != self._failing:
                log.warning("model versions: %s; serving what is loaded", message)
            self._failing = message
            return
        if self._failing is not None:
            log.info("model versions: the store answers again")
            self._failing = None

    def _import_versions(self, task: str) -> None:
        known = self._versions.get(task, {})
        for version in ModelStore.versions(self, task):
            local = self._local(task, version)
            if not complete(local):
                continue
            info = known.get(version)
            if (task, version) in self._finished:
                self._publish_quietly(task, version)
            elif info is None or (info.state == RESERVED and self._abandoned(task, version, local)):
                if self.publish(task, version) and info is None:
                    log.info("task %s: imported version %s from %s", task, version, local)
            elif info.state == PUBLISHED:
                self._late_files(task, version, local)

    def _abandoned(self, task: str, version: str, local: Path) -> bool:
        """Reserved, finished on disk, and not published for a long while: its fitter is gone."""
        if (task, version) in self._reserved:
            return False
        age = time.time() - (local / MANIFEST_NAME).stat().st_mtime
        return age > STALE_RESERVATION_S

    def _late_files(self, task: str, version: str, local: Path) -> None:
        """Files a finished folder gained after it was published (a report): added."""
        names = dict(files_of(local))
        if set(names) <= set(self._index(task, version)):
            return
        index = self._index(task, version, fresh=True)
        extra = [self.checksums.local_file(n, p) for n, p in names.items() if n not in index]
        if not extra:
            return
        added: int = self._db(lambda e: rows.add_files(e, task, version, extra))
        if added:
            self._index(task, version, fresh=True)

    def _import_pointer(self, task: str) -> None:
        path = self.task_dir(task) / POINTER
        sig = signature(path)
        if sig is None or self._seen.get(task) == sig:
            return
        self._seen[task] = sig
        data = ModelStore.pointer(self, task)  # the file's, checked as it always was
        row = self._pointer_row(task)
        if data is None or (MIRROR_KEY in data and row is not None):
            return  # unreadable (warned), or a copy of this store's pointer
        # A copy of another store's pointer (the folder reused with a new store) still
        # says what was served: taken while this store points at nothing.
        version = str(data["version"])
        if row is not None and (row.version == version or sig[0] / 1e9 <= row.updated_at):
            return
        if not self._published(task, version):
            log.warning("task %s: %s names %s, which the store does not hold; ignoring it",
                        task, path, version)  # fmt: skip
            return
        log.info("task %s: serving %s, as %s says", task, version, path)
        try:
            self.set_current(task, version)
        except ArtifactError as exc:
            log.warning("task %s: %s", task, exc)
