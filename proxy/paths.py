"""Paths in the config are relative to the config file's folder, not to where a verb runs.

`tracer models list --config run2/config.yaml` from another folder must find run2's
models: `store.url` (an SQLite file), `artifacts.dir` and the encoder folders named in
`tasks[].embedder` are made absolute against the folder of the file they were read from.
A config built in code (no file) keeps its paths as given.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

HF_PREFIX = "hf:"


def sqlite_file(url: str) -> Path | None:
    """The database file of an SQLite URL; None for another backend or an in-memory one."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def absolute_store_url(url: str, base: Path) -> str:
    """An SQLite URL whose relative file is made absolute against ``base``."""
    file = sqlite_file(url)
    if file is None or file.is_absolute():
        return url
    parsed = make_url(url).set(database=str(base / file))
    return parsed.render_as_string(hide_password=False)


def absolute_path(path: Path, base: Path) -> Path:
    path = path.expanduser()
    return path if path.is_absolute() else base / path


def absolute_embedder(spec: str, base: Path) -> str:
    """``tfidf``, ``hf:REPO`` and absolute folders as they are; relative folders made absolute."""
    parts = []
    for part in spec.split("+"):
        item = part.strip()
        if item in ("", "tfidf") or item.startswith(HF_PREFIX):
            parts.append(item)
        else:
            parts.append(str(absolute_path(Path(item), base)))
    return "+".join(parts)
