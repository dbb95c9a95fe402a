"""Helpers shared by the suites: data, configs, and a real proxy on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from proxy.config import Config, parse_config
from proxy.sim.synthetic import INTENTS
from router.tools import call_json, tool_label
from router.traces import Trace

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


def free_ports(n: int) -> list[int]:
    """`n` distinct ports free on 127.0.0.1 now (held together while chosen, so no two
    are the same); a server started on one may still lose it to another process."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]


def free_port() -> int:
    return free_ports(1)[0]


def proxy_config(
    teacher_url: str, db_path: Path, *, api_keys: list[str] | None = None, **server: Any
) -> Config:
    """A config with one pass-through model and one banking task taught by it. Its
    versions are kept beside the store, and no fit starts: these proxies test the door
    and the relay, and a fit landing mid-test (after its five minutes) would change
    what the task answers."""
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
        "artifacts": {"dir": str(db_path.parent / f"{db_path.stem}-artifacts")},
        "refit": {"min_new_traces": 10**9, "interval_seconds": 10**9},
    }
    return parse_config(raw, env={})


@contextlib.contextmanager
def running_proxy(config: Config) -> Iterator[str]:
    """A real uvicorn server with the proxy app; yields its base URL ending in /v1."""
    from proxy.app import create_app
    from proxy.server import uvicorn_options
    from proxy.sim.threaded import serve_in_thread

    options = uvicorn_options(
        keep_alive_s=config.server.keep_alive_seconds,
        read_timeout_s=config.server.read_timeout_seconds,
    )
    with serve_in_thread(create_app(config), name="tracer-proxy", **options) as url:
        yield f"{url}/v1"


INTENT_LABELS = sorted(INTENTS)


def intents_config(
    teacher_url: str,
    tmp: Path,
    artifacts: Path | None = None,
    *,
    task: dict | None = None,
    **top: Any,
) -> Config:
    """One task, `intents`, on the project's own intent set, taught by `teacher`."""
    raw = {
        "model_list": [
            {
                "model_name": "teacher",
                "litellm_params": {
                    "model": "openai/teacher",
                    "api_key": "k",
                    "api_base": teacher_url,
                },
            }
        ],
        "tasks": [
            {
                "name": "intents",
                "match": {"model": "intents"},
                "teacher": "teacher",
                "labels": INTENT_LABELS,
                **(task or {}),
            }
        ],
        "store": {"url": f"sqlite+aiosqlite:///{tmp / 'tracer.db'}"},
        "artifacts": {"dir": str(artifacts or tmp / "artifacts")},
        **top,
    }
    return parse_config(raw, env={})


def serve_fitted_intents(root: Path, rows: list[tuple[str, str]]) -> None:
    """Fit `rows` at α 0.9 and serve the model as version v0001 of task `intents`."""
    from proxy.models import ModelStore
    from training.fit import FitOptions, fit

    store = ModelStore(root)
    options = FitOptions(target=0.9, confidence=0.9, min_coverage=0.05, quiet=True)
    result = fit(rows, store.version_dir("intents", "v0001"), options)
    assert result.deployed, result.manifest.get("refusal")
    store.set_current("intents", "v0001")


def tool_traces(steps: dict[str, dict[str, object]]) -> list[Trace]:
    """A tool teacher's answers (as `make_tool_steps` gives them) as traces."""
    out = []
    for text, answer in steps.items():
        calls = [
            {"function": {"name": c["name"], "arguments": json.dumps(c["arguments"])}}
            for c in answer.get("tool_calls") or []  # type: ignore[attr-defined]
        ]
        content = answer.get("content")
        label = tool_label(calls, content)  # type: ignore[arg-type]
        assert label is not None
        out.append(Trace(text, label, raw_output=call_json(calls, content)))  # type: ignore[arg-type]
    return out
