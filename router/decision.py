"""The routing decision returned for one input."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

DecisionKind = Literal["handled", "deferred"]


@dataclass(frozen=True, slots=True)
class Decision:
    """What the router decided for one input.

    `label` is the surrogate's answer (also set when deferred, for logging);
    `decision` says whether the surrogate's answer may be served. `runner_up` is its
    second most likely label: with `label`, the guesses a cheaper model may confirm.
    """

    label: str
    decision: DecisionKind
    accept_score: float
    reason: str
    ood: bool = False
    cluster: int | None = None  # the region of input space it fell in (see the report)
    runner_up: str | None = None  # None with a single label

    @property
    def guesses(self) -> tuple[str, ...]:
        """Its two most likely labels, most likely first."""
        return (self.label,) if self.runner_up is None else (self.label, self.runner_up)

    @property
    def handled(self) -> bool:
        return self.decision == "handled"
