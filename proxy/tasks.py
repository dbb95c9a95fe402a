"""Which configured classification task, if any, a chat request belongs to."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from router.chat import extract_input, system_prompt
from router.tools import tool_input

from .config import TaskConfig


class TaskMatcher:
    def __init__(self, tasks: Sequence[TaskConfig]) -> None:
        self.tasks = list(tasks)
        self._by_alias = {t.match.model: t for t in self.tasks if t.match.model is not None}

    def match(self, body: Mapping[str, Any]) -> TaskConfig | None:
        """The first task whose every criterion holds; checks are cheap string tests."""
        if not self.tasks:
            return None
        model = body.get("model")
        prompt: str | None = None
        for task in self.tasks:
            if task.match.model is not None and task.match.model != model:
                continue
            if task.kind == "tools" and not body.get("tools"):
                continue  # an agent's tool step carries its tools
            needle = task.match.system_prompt_contains
            if needle is not None:
                if prompt is None:
                    prompt = system_prompt(body["messages"])
                if needle not in prompt:
                    continue
            return task
        return None

    def why_not(self, task: TaskConfig, body: Mapping[str, Any]) -> str:
        """Why a request that names `task`'s alias was not treated as the task."""
        if task.match.model is not None and body.get("model") != task.match.model:
            return f"the model is not the task's alias `{task.match.model}`"
        if task.kind == "tools" and not body.get("tools"):
            return f"task `{task.name}` is a tool task, and the request carries no `tools`"
        needle = task.match.system_prompt_contains
        if needle is not None and needle not in system_prompt(body["messages"]):
            return (
                f"the system prompt does not contain the text task `{task.name}` matches on "
                "(tasks[].match.system_prompt_contains)"
            )
        return f"no input for task `{task.name}`: no user message of text" + (
            " matching tasks[].input.pattern" if task.input.pattern else ""
        )

    def by_alias(self, model: object) -> TaskConfig | None:
        """The task whose alias a request names, whether or not its prompt matched."""
        return self._by_alias.get(model) if isinstance(model, str) else None


def task_input(task: TaskConfig, messages: Sequence[Mapping[str, Any]]) -> str | None:
    """The classifier's input; a tool task's also names the tools called since the user
    last spoke (`router.tools.tool_input`)."""
    if task.kind == "tools":
        return tool_input(messages, task.input.message, task.input.pattern)
    return extract_input(messages, task.input.message, task.input.pattern)
