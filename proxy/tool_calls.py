"""An agent's request, seen from the tool the surrogate chose for it.

- The chosen tool must be one the request offers, and the arguments must validate
  against that tool's JSON schema, as the client defines it today; a whole call that
  does not is narrowed instead of answered.
- The schema comes from the client, so checking it must cost little and reach nothing:
  a `$ref` resolves only inside the schema (never a URL or a file), and a schema that
  holds a regular expression (`pattern`, `patternProperties`) is not run at all (a
  pattern can take exponential time, on the event loop): such a whole call is
  narrowed. A schema that fails in any other way is no schema a call can satisfy.
- A narrowed request keeps only that tool and forces it (`tool_choice`), so a model
  (the teacher, or `tasks[].narrow_to`) fills the arguments with a shorter prompt.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Mapping
from typing import Any

from jsonschema import validators
from referencing import Registry

log = logging.getLogger("tracer.tools")

#: Resolves a `$ref` within its own schema only: nothing is ever retrieved.
_NOTHING_REMOTE: Registry[Any] = Registry()
_REGEX_KEYWORDS = frozenset({"pattern", "patternProperties"})


def offered_tool(body: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    """The request's definition of the tool `name`, if it offers it."""
    for tool in body.get("tools") or []:
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and function.get("name") == name:
            return dict(tool)
    return None


def _has_regex(node: Any) -> bool:
    """Does the schema name a regular-expression keyword anywhere? (A property called
    "pattern" counts too: such a call is narrowed, which is safe.)"""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if not _REGEX_KEYWORDS.isdisjoint(item):
                return True
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


@functools.lru_cache(maxsize=512)
def _validator(schema_json: str) -> Any | None:
    try:
        schema = json.loads(schema_json)
        if _has_regex(schema):
            return None
        cls = validators.validator_for(schema)
        cls.check_schema(schema)
        return cls(schema, registry=_NOTHING_REMOTE)
    except Exception as exc:  # any schema the client sent: not one a call can satisfy
        log.debug("a tool schema that cannot be checked: %s", exc)
        return None


def valid_arguments(tool: Mapping[str, Any], arguments: Mapping[str, Any]) -> bool:
    """Do `arguments` satisfy the tool's parameter schema? (No schema: any object does;
    a schema that cannot be checked, as above: nothing does.)"""
    schema = (tool.get("function") or {}).get("parameters")
    if schema is None:
        return True
    validator = _validator(json.dumps(schema, sort_keys=True))
    if validator is None:
        return False
    try:
        return bool(validator.is_valid(dict(arguments)))
    except Exception as exc:  # an unresolvable or endless `$ref`, met while checking
        log.debug("a tool schema that cannot be checked: %s", exc)
        return False


def narrowed_body(body: Mapping[str, Any], tool: Mapping[str, Any]) -> dict[str, Any]:
    """The request with only `tool` offered and forced, asked for whole (not streamed)."""
    name = tool["function"]["name"]
    out = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
    out["tools"] = [tool]
    out["tool_choice"] = {"type": "function", "function": {"name": name}}
    out.pop("parallel_tool_calls", None)
    return out


def tool_ineligible(body: Mapping[str, Any]) -> str | None:
    """Why a tool task's request must go to the teacher whatever the surrogate says."""
    if body.get("n") not in (None, 1):
        return "n > 1 asks for several samples"
    if body.get("logprobs") or body.get("top_logprobs"):
        return "logprobs were requested"
    if body.get("functions") or body.get("function_call"):
        return "legacy `functions` are set"
    choice = body.get("tool_choice")
    if choice not in (None, "auto"):
        return "`tool_choice` constrains the answer"
    return None
