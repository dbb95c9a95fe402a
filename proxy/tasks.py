"""Which configured classification task, if any, a chat request belongs to."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from router.chat import extract_input, system_prompt

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
            needle = task.match.system_prompt_contains
            if needle is not None:
                if prompt is None:
                    prompt = system_prompt(body["messages"])
                if needle not in prompt:
                    continue
            return task
        return None

    def by_alias(self, model: object) -> TaskConfig | None:
        """The task whose alias a request names, whether or not its prompt matched."""
        return self._by_alias.get(model) if isinstance(model, str) else None


def task_input(task: TaskConfig, messages: Sequence[Mapping[str, Any]]) -> str | None:
    return extract_input(messages, task.input.message, task.input.pattern)
