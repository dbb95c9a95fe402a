"""The local copy of model versions: which folders are complete, their files and checksums.

With versions in the store, `artifacts.dir` is a cache: a folder is fetched file by file
(each written beside its place, checked against the store's sha256, then renamed in), and
a cached file is trusted only while its size and sha256 match the store's. Hashing is
remembered per (size, mtime, inode), so a file is read whole once until it changes.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from pathlib import Path
from typing import Any

from router.manifest import MANIFEST_NAME, sha256_file

from .store.versions import FileInfo, LocalFile

MIRROR_KEY = "store_updated_at"  # marks a pointer file written as a copy of the store's


def complete(folder: Path) -> bool:
    """A version folder that a fit finished (it is renamed into place with its manifest)."""
    return (folder / MANIFEST_NAME).is_file()


def files_of(folder: Path) -> list[tuple[str, Path]]:
    """(name relative to the folder, path) of its regular files; hidden ones (temporary
    files of a fetch or a fit) are left out."""
    found = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        found.append((rel.as_posix(), path))
    return found


def safe_name(name: str) -> bool:
    """A stored file name that stays inside the version's folder."""
    parts = name.split("/")
    return (
        bool(name)
        and not name.startswith("/")
        and "\\" not in name
        and all(part not in ("", ".", "..") and not part.startswith(".") for part in parts)
    )


class Checksums:
    """sha256 of local files, remembered until a file's size, mtime or inode changes."""

    def __init__(self) -> None:
        self._known: dict[str, tuple[int, int, int, str]] = {}
        self._lock = threading.Lock()

    def sha256(self, path: Path) -> str:
        stat = path.stat()
        key = (stat.st_size, stat.st_mtime_ns, stat.st_ino)
        with self._lock:
            known = self._known.get(str(path))
        if known is not None and known[:3] == key:
            return known[3]
        digest = sha256_file(path)
        with self._lock:
            self._known[str(path)] = (*key, digest)
        return digest

    def intact(self, path: Path, info: FileInfo) -> bool:
        try:
            return path.stat().st_size == info.size and self.sha256(path) == info.sha256
        except OSError:
            return False

    def local_file(self, name: str, path: Path) -> LocalFile:
        return LocalFile(name, path, path.stat().st_size, self.sha256(path))


def temporary(path: Path) -> Path:
    """A hidden name beside `path` for writing it before it is renamed into place."""
    return path.with_name(f".{path.name}.fetch-{uuid.uuid4().hex[:8]}")


def read_pointer_file(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_pointer_file(path: Path, pointer: dict[str, Any]) -> None:
    """Replace the pointer file by rename: readers see the old one or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}.tmp")
    tmp.write_text(json.dumps(pointer) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def signature(path: Path) -> tuple[int, int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size, stat.st_ino
