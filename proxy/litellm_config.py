"""A LiteLLM proxy config, read as it is: what of LiteLLM's own sections applies here.

LiteLLM's proxy config has `model_list` (shared with this proxy) and four more sections.
They are accepted whole; what applies is honoured, and every other key is named once in
the log as ignored:

- `model_list`: repeated `model_name` entries balance load (`proxy/upstream.py`),
  weighted by `litellm_params.weight`, else `rpm`, else `tpm`, as LiteLLM's default
  `simple-shuffle` does; `model_info` prices a model (`proxy/pricing.py`).
- `litellm_settings`: `callbacks`, `success_callback` and `failure_callback` are set on
  the `litellm` module when `server.upstream_client: litellm` (every call through
  LiteLLM); a ``module.attribute`` callback is imported from the config's folder.
- `router_settings`: `routing_strategy: simple-shuffle` (the default) is what is done.
- `general_settings`: `master_key` is a client key, added to `server.api_keys`.
- `environment_variables`: set in the environment (as LiteLLM does) for `os.environ/`
  references and for the providers' own variables.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("tracer.config")

SECTIONS = ("litellm_settings", "router_settings", "general_settings", "environment_variables")
CALLBACK_KEYS = ("callbacks", "success_callback", "failure_callback")

_warned: set[tuple[str, str]] = set()


def ignored(sections: Mapping[str, Any], upstream_client: str) -> dict[str, str]:
    """Every key of LiteLLM's sections that has no effect here, with why."""
    out: dict[str, str] = {}
    for key in sections.get("litellm_settings") or {}:
        path = f"litellm_settings.{key}"
        if key not in CALLBACK_KEYS:
            out[path] = "not used by this proxy"
        elif upstream_client != "litellm":
            out[path] = "honoured only with server.upstream_client: litellm"
    for key, value in (sections.get("router_settings") or {}).items():
        if key != "routing_strategy" or value != "simple-shuffle":
            out[f"router_settings.{key}"] = (
                "load is balanced over a model_name's entries by weight, rpm or tpm "
                "(LiteLLM's simple-shuffle); the proxy never retries or falls back"
            )
    for key in sections.get("general_settings") or {}:
        if key != "master_key":
            out[f"general_settings.{key}"] = "the proxy's own settings are under server:"
    return out


def warn_ignored(keys: Mapping[str, str], source: str) -> None:
    """Log each ignored key once per process."""
    for path, why in keys.items():
        if (source, path) in _warned:
            continue
        _warned.add((source, path))
        log.warning("%s: %s is ignored (%s)", source, path, why)


def master_key(general: Mapping[str, Any] | None) -> Any:
    return (general or {}).get("master_key")


def _callback(value: Any, base: Path | None) -> Any:
    """A callback name as it is; ``module.attribute`` imported (from the config's folder)."""
    if not isinstance(value, str) or "." not in value:
        return value
    module_name, _, attribute = value.rpartition(".")
    added = base is not None and str(base) not in sys.path
    if added:
        sys.path.insert(0, str(base))
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return value  # a name LiteLLM itself may know
    finally:
        if added:
            sys.path.remove(str(base))
    return getattr(module, attribute)


def apply_callbacks(settings: Mapping[str, Any] | None, base: Path | None) -> list[str]:
    """Set `litellm_settings`' callbacks on the litellm module; the keys set."""
    import litellm

    done = []
    for key in CALLBACK_KEYS:
        value = (settings or {}).get(key)
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        setattr(litellm, key, [_callback(v, base) for v in values])
        done.append(key)
    return done
