"""What a call to a configured model costs: its `model_info` prices, else LiteLLM's map.

`model_info` follows LiteLLM's proxy config: `input_cost_per_token` and
`output_cost_per_token` (USD), and here also `input_cost_per_request` for models priced
by the call. A model neither prices is unpriced (None), and may not be a lane.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

from .config import ModelEntry

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


@dataclass(frozen=True)
class Prices:
    per_prompt_token: float = 0.0
    per_completion_token: float = 0.0
    per_request: float = 0.0

    def cost(self, prompt_tokens: int | None, completion_tokens: int | None) -> float:
        return (
            self.per_request
            + self.per_prompt_token * (prompt_tokens or 0)
            + self.per_completion_token * (completion_tokens or 0)
        )

    def typical(self, prompt_tokens: float = 100.0, completion_tokens: float = 10.0) -> float:
        """The cost of a typical call, to order models from cheapest."""
        return self.cost(round(prompt_tokens), round(completion_tokens))


@functools.lru_cache(maxsize=256)
def _litellm_prices(model: str) -> Prices | None:
    import litellm

    try:
        prompt, _ = litellm.cost_per_token(model=model, prompt_tokens=1_000_000)
        _, completion = litellm.cost_per_token(model=model, completion_tokens=1_000_000)
    except Exception:  # LiteLLM raises its own errors for a model it does not price
        return None
    return Prices(prompt / 1e6, completion / 1e6)


def prices(entry: ModelEntry) -> Prices | None:
    info = entry.model_info or {}
    keys = ("input_cost_per_token", "output_cost_per_token", "input_cost_per_request")
    if any(isinstance(info.get(k), int | float) for k in keys):
        return Prices(
            float(info.get("input_cost_per_token") or 0.0),
            float(info.get("output_cost_per_token") or 0.0),
            float(info.get("input_cost_per_request") or 0.0),
        )
    return _litellm_prices(entry.litellm_params.model)


def call_cost(
    entry: ModelEntry, prompt_tokens: int | None, completion_tokens: int | None
) -> float | None:
    """USD of one call, from its usage; None for an unpriced model or no usage at all."""
    found = prices(entry)
    if found is None:
        return None
    if prompt_tokens is None and completion_tokens is None and not found.per_request:
        return None
    return found.cost(prompt_tokens, completion_tokens)
