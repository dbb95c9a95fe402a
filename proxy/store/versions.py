"""Model versions in the store: numbers reserved by fits, published files, the pointers.

A version's number is reserved before its fit starts (a unique row per task and version,
so two replicas never fit the same number); once the fit wrote its folder, its files are
published in parts of at most `PART_BYTES`, each part row carrying the whole file's size
and sha256. The pointer of a task is one row: serving another version updates it.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import case, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .schema import ModelFileRow, ModelPointerRow, ModelVersionRow

PART_BYTES = 4 * 1024 * 1024
RESERVED, PUBLISHED = "reserved", "published"


@dataclass(frozen=True)
class VersionInfo:
    version: str
    number: int
    state: str  # reserved | published
    status: str | None  # the manifest's status, once published
    holder: str


@dataclass(frozen=True)
class Pointer:
    version: str
    previous: str | None
    updated_at: float
    holder: str | None
    pinned: bool = False  # held by `tracer models pin` or a rollback: refits do not move it


@dataclass(frozen=True)
class FileInfo:
    size: int
    sha256: str


@dataclass(frozen=True)
class LocalFile:
    """A file of a version's folder, to publish: its name relative to the folder."""

    name: str
    path: Path
    size: int
    sha256: str


async def snapshot(
    engine: AsyncEngine,
) -> tuple[dict[str, Pointer], dict[str, dict[str, VersionInfo]]]:
    """Every task's pointer and versions (without manifests or files): one poll's read."""
    async with engine.connect() as conn:
        pointers = {
            row.task: Pointer(
                row.version, row.previous, row.updated_at, row.holder, bool(row.pinned)
            )
            for row in (await conn.execute(select(ModelPointerRow))).all()
        }
        query = select(
            ModelVersionRow.task, ModelVersionRow.version, ModelVersionRow.number,
            ModelVersionRow.state, ModelVersionRow.status, ModelVersionRow.holder,
        )  # fmt: skip
        versions: dict[str, dict[str, VersionInfo]] = {}
        for task, version, number, state, status, holder in (await conn.execute(query)).all():
            versions.setdefault(task, {})[version] = VersionInfo(
                version, number, state, status, holder
            )
    return pointers, versions


async def reserve(
    engine: AsyncEngine, task: str, holder: str, at_least: int, attempts: int = 50
) -> tuple[str, int]:
    """Reserve the next free version number of a task, at least `at_least`."""
    async with engine.connect() as conn:
        top = (
            await conn.execute(
                select(func.max(ModelVersionRow.number)).where(ModelVersionRow.task == task)
            )
        ).scalar()
    number = max(at_least, int(top or 0) + 1)
    for _ in range(attempts):
        version = f"v{number:04d}"
        try:
            async with engine.begin() as conn:
                await conn.execute(
                    insert(ModelVersionRow).values(
                        task=task, version=version, number=number, state=RESERVED, holder=holder
                    )
                )
        except IntegrityError:
            number += 1  # another replica took it between the read and the insert
            continue
        return version, number
    raise RuntimeError(f"could not reserve a version number for task {task}")


async def publish(
    engine: AsyncEngine,
    task: str,
    version: str,
    number: int,
    holder: str,
    manifest: str,
    status: str | None,
    files: Sequence[LocalFile],
) -> bool:
    """Publish a version's files; False when it is published already (by anyone).

    The version row is claimed first (a reserved row turned published, or a new row), in
    the transaction that writes the files: a second publisher waits for the first and then
    finds nothing to claim, and readers see all of the files or none.
    """
    try:
        async with engine.begin() as conn:
            claimed = await conn.execute(
                update(ModelVersionRow)
                .where(
                    ModelVersionRow.task == task,
                    ModelVersionRow.version == version,
                    ModelVersionRow.state == RESERVED,
                )
                .values(state=PUBLISHED, holder=holder, status=status, manifest=manifest)
            )
            if claimed.rowcount != 1:
                exists = await conn.execute(
                    select(ModelVersionRow.id).where(
                        ModelVersionRow.task == task, ModelVersionRow.version == version
                    )
                )
                if exists.first() is not None:
                    return False
                await conn.execute(
                    insert(ModelVersionRow).values(
                        task=task, version=version, number=number, state=PUBLISHED,
                        holder=holder, status=status, manifest=manifest,
                    )
                )  # fmt: skip
            for file in files:
                await _write_file(conn, task, version, file)
    except IntegrityError:
        return False  # published at the same moment by another replica
    return True


async def add_files(
    engine: AsyncEngine, task: str, version: str, files: Sequence[LocalFile]
) -> int:
    """Add files a published version lacks (a report written after the model); the count."""
    added = 0
    for file in files:
        try:
            async with engine.begin() as conn:
                await _write_file(conn, task, version, file)
        except IntegrityError:
            continue  # added by another replica meanwhile
        added += 1
    return added


async def _write_file(conn: AsyncConnection, task: str, version: str, file: LocalFile) -> None:
    digest = hashlib.sha256()
    part = 0
    with file.path.open("rb") as fh:
        while True:
            data = fh.read(PART_BYTES)
            if not data and part > 0:
                break
            digest.update(data)
            await conn.execute(
                insert(ModelFileRow).values(
                    task=task, version=version, name=file.name, part=part, size=file.size,
                    sha256=file.sha256, data=data,
                )
            )  # fmt: skip
            part += 1
            if len(data) < PART_BYTES:
                break
    if digest.hexdigest() != file.sha256:
        raise OSError(f"{file.path} changed while it was published")


async def manifest_text(engine: AsyncEngine, task: str, version: str) -> str | None:
    query = select(ModelVersionRow.manifest).where(
        ModelVersionRow.task == task, ModelVersionRow.version == version
    )
    async with engine.connect() as conn:
        return (await conn.execute(query)).scalar()


async def file_index(engine: AsyncEngine, task: str, version: str) -> dict[str, FileInfo]:
    """The files of a published version: name -> (size, sha256)."""
    query = (
        select(ModelFileRow.name, ModelFileRow.size, ModelFileRow.sha256)
        .where(ModelFileRow.task == task, ModelFileRow.version == version, ModelFileRow.part == 0)
        .order_by(ModelFileRow.name)
    )
    async with engine.connect() as conn:
        return {name: FileInfo(size, sha) for name, size, sha in (await conn.execute(query)).all()}


async def read_file(engine: AsyncEngine, task: str, version: str, name: str, out: Path) -> str:
    """Write one file's parts, in order, to `out`; return the sha256 of what was written."""
    query = (
        select(ModelFileRow.data)
        .where(
            ModelFileRow.task == task, ModelFileRow.version == version, ModelFileRow.name == name
        )
        .order_by(ModelFileRow.part)
    )
    digest = hashlib.sha256()
    async with engine.connect() as conn:
        result = await conn.stream(query)
        with out.open("wb") as fh:
            async for (data,) in result:
                digest.update(data)
                fh.write(data)
    return digest.hexdigest()


async def set_pointer(
    engine: AsyncEngine, task: str, version: str, holder: str, pinned: bool = False
) -> Pointer:
    """Point a task at a version, held there or not: one row updated (inserted the first
    time)."""
    for _ in range(5):
        now = time.time()
        async with engine.begin() as conn:
            moved = await conn.execute(
                update(ModelPointerRow)
                .where(ModelPointerRow.task == task)
                .values(
                    version=version,
                    previous=case(
                        (ModelPointerRow.version != version, ModelPointerRow.version),
                        else_=ModelPointerRow.previous,
                    ),
                    updated_at=now,
                    holder=holder,
                    pinned=pinned,
                )
            )
            if moved.rowcount == 1:
                row = (
                    await conn.execute(select(ModelPointerRow).where(ModelPointerRow.task == task))
                ).one()
                return Pointer(
                    row.version, row.previous, row.updated_at, row.holder, bool(row.pinned)
                )
        try:
            async with engine.begin() as conn:
                await conn.execute(
                    insert(ModelPointerRow).values(
                        task=task,
                        version=version,
                        previous=None,
                        updated_at=now,
                        holder=holder,
                        pinned=pinned,
                    )
                )
        except IntegrityError:
            continue  # another replica created it meanwhile: update it instead
        return Pointer(version, None, now, holder, pinned)
    raise RuntimeError(f"could not move the model pointer of task {task}")
