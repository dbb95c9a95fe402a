"""An agent's request, seen from the tool the surrogate chose for it.

- The chosen tool must be one the request offers, and the arguments must validate
  against that tool's JSON schema, as the client defines it today; a whole call that
  does not is narrowed instead of answered.
- A narrowed request keeps only that tool and forces it (`tool_choice`), so a model
  (the teacher, or `tasks[].narrow_to`) fills the arguments with a shorter prompt.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

from jsonschema import exceptions as schema_errors
from jsonschema import validators


def offered_tool(body: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    """The request's definition of the tool `name`, if it offers it."""
    for tool in body.get("tools") or []:
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and function.get("name") == name:
            return dict(tool)
    return None


@functools.lru_cache(maxsize=512)
def _validator(schema_json: str) -> Any | None:
    try:
        schema = json.loads(schema_json)
        cls = validators.validator_for(schema)
        cls.check_schema(schema)
        return cls(schema)
    except (ValueError, schema_errors.SchemaError):
        return None


def valid_arguments(tool: Mapping[str, Any], arguments: Mapping[str, Any]) -> bool:
    """Do `arguments` satisfy the tool's parameter schema? (No schema: any object does;
    a schema that is not valid JSON Schema: nothing does.)"""
    schema = (tool.get("function") or {}).get("parameters")
    if schema is None:
        return True
    validator = _validator(json.dumps(schema, sort_keys=True))
    return validator is not None and bool(validator.is_valid(dict(arguments)))


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
