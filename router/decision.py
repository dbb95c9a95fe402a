"""The routing decision returned for one input."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

DecisionKind = Literal["handled", "deferred"]


@dataclass(frozen=True, slots=True)
class Decision:
    """What the router decided for one input.

    `label` is the surrogate's answer (also set when deferred, for logging);
    `decision` says whether the surrogate's answer may be served.
    """

    label: str
    decision: DecisionKind
    accept_score: float
    reason: str
    ood: bool = False
    cluster: int | None = None  # the region of input space it fell in (see the report)

    @property
    def handled(self) -> bool:
        return self.decision == "handled"
