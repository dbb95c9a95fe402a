"""Helpers shared by the suites: data, configs, and a real proxy on loopback."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from proxy.config import Config, parse_config

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"

LABELS = ["card_arrival", "card_not_working", "lost_or_stolen_card", "exchange_rate"]
ANSWERS = {
    "where is my new card": "card_arrival",
    "my card still has not arrived": "card_arrival",
    "the card machine rejects my card": "card_not_working",
    "my card stopped working": "card_not_working",
    "someone stole my wallet with my card": "lost_or_stolen_card",
    "i lost my card yesterday": "lost_or_stolen_card",
    "what is the euro to dollar rate": "exchange_rate",
    "how much is a pound in yen": "exchange_rate",
}
UPSTREAM_KEY = "sk-upstream-test-key-0123456789"
CLIENT_KEY = "tracer-client-key-abcdef"


def proxy_config(
    teacher_url: str, db_path: Path, *, api_keys: list[str] | None = None, **server: Any
) -> Config:
    """A config with one pass-through model and one banking task taught by it."""
    raw = {
        "model_list": [
            {
                "model_name": "teacher-model",
                "litellm_params": {
                    "model": "openai/teacher-model",
                    "api_key": UPSTREAM_KEY,
                    "api_base": teacher_url,
                },
            }
        ],
        "tasks": [
            {
                "name": "banking",
                "match": {"model": "banking-intent"},
                "teacher": "teacher-model",
                "labels": LABELS,
            }
        ],
        "server": {"api_keys": api_keys or [], **server},
        "store": {"url": f"sqlite+aiosqlite:///{db_path}"},
    }
    return parse_config(raw, env={})


@contextlib.contextmanager
def running_proxy(config: Config) -> Iterator[str]:
    """A real uvicorn server with the proxy app; yields its base URL ending in /v1."""
    from proxy.app import create_app
    from proxy.threaded import serve_in_thread

    with serve_in_thread(create_app(config), name="tracer-proxy") as url:
        yield f"{url}/v1"
