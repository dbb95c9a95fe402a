"""``os.environ/NAME`` references in the config, resolved where their value is needed.

A reference whose variable is set is replaced by its value when the file is read. One
whose variable is unset is kept as written and remembered (key path -> NAME), so that a
verb that never uses it (`tracer models list`, `tracer traces export`) works without,
say, the upstream's key; `Config.require_env` names every unset one for the verbs that
do use them (`tracer serve` checks them all before it starts).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ENV_PREFIX = "os.environ/"


def env_name(value: Any) -> str | None:
    """NAME for a string ``os.environ/NAME``, else None."""
    if isinstance(value, str) and value.startswith(ENV_PREFIX):
        return value[len(ENV_PREFIX) :]
    return None


def resolve_env(
    value: Any, env: Mapping[str, str], path: str = "", missing: dict[str, str] | None = None
) -> Any:
    """Replace ``os.environ/NAME`` strings by the variables' values.

    An unset variable leaves its reference in place and is recorded in ``missing`` as
    ``{key path: NAME}`` (the key path spelt as validation errors spell it).
    """
    name = env_name(value)
    if name is not None:
        if name in env:
            return env[name]
        if missing is not None:
            missing[path or "value"] = name
        return value
    if isinstance(value, dict):
        return {
            k: resolve_env(v, env, f"{path}.{k}" if path else str(k), missing)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [resolve_env(v, env, f"{path}[{i}]", missing) for i, v in enumerate(value)]
    return value


def unset_message(path: str, name: str) -> str:
    return f"{path}: environment variable {name} is not set"


def under(path: str, prefixes: tuple[str, ...]) -> bool:
    """Whether a key path is one of ``prefixes`` or inside one of them."""
    return not prefixes or any(path == p or path.startswith((f"{p}.", f"{p}[")) for p in prefixes)
