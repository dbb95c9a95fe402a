"""A simulated LLM teacher: a real OpenAI-compatible HTTP server that answers from labels.

No LLM is reachable from tests, the demo or the benchmarks, so they point the proxy's
upstream at this server instead. It answers chat completions (plain or SSE-streamed) with
the label a data set gives for the input, and can inject what real teachers do to a proxy:
latency, errors, label noise, label drift (``relabel``) and key checks. Everything is
deterministic given ``seed``, and mutable at runtime via ``configure`` or ``POST /_sim/config``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import random
import struct
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, cast

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from .threaded import serve_in_thread
from .tools import tool_response

EMBED_DIM = 16
_UVICORN_OPTS: dict[str, Any] = {
    "log_level": "warning", "access_log": False, "lifespan": "off", "timeout_graceful_shutdown": 2
}  # fmt: skip
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 429: "rate_limit_error"}
_CONFIG_KEYS = frozenset((
    "labels", "latency_s", "jitter_s", "error_rate", "error_status", "noise", "output_format",
    "json_field", "stream_chunk_chars", "chunk_delay_s", "require_key", "models", "fault",
    "spellings", "tool_answers", "noise_by_label",
))  # fmt: skip
# Broken answers a real upstream or a proxy in front of it can send with a 200.
FAULTS = ("non_json", "truncated", "no_choices", "stream_cut", "stream_no_done", "error_event")


@dataclass
class _Reject(Exception):
    """Raised by a handler to answer an error; rendered by ``_error``."""

    status: int
    message: str
    code: str | None = None


async def _error(request: Request, exc: Exception) -> Response:
    """OpenAI's error shape, so clients raise the same exception classes as against OpenAI.

    A 429 carries the rate-limit headers OpenAI sends, for the proxy to pass on.
    """
    assert isinstance(exc, _Reject)
    kind = _ERROR_TYPES.get(exc.status, "server_error" if exc.status >= 500 else None)
    err = {"message": exc.message, "type": kind or "invalid_request_error", "code": exc.code}
    headers = RATE_LIMIT_HEADERS if exc.status == 429 else None
    return JSONResponse({"error": err}, exc.status, headers=headers)


RATE_LIMIT_HEADERS = {"retry-after": "7", "x-ratelimit-remaining-requests": "0"}


def _new_counts() -> dict[str, Any]:
    # chat_requests: the model, tool names and tool_choice of the last 200 chat requests
    return {"requests": 0, "by_path": {}, "errors_injected": 0, "auth_headers": [],
            "chat_requests": []}  # fmt: skip


def _stable_hash(text: str) -> int:
    """A hash that does not change between processes (unlike ``hash``)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def _text_of(content: Any) -> str:
    """Message content as text: a string, or the text parts of a multi-part content list."""
    parts = content if isinstance(content, list) else [{"text": content}]
    return " ".join(
        p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str)
    )


def _tokens(text: str) -> int:
    return len(text.split())  # a rough count, enough for usage figures


def _choice(index: int, finish: str | None = None, **body: Any) -> dict[str, Any]:
    return {"index": index, **body, "logprobs": None, "finish_reason": finish}


def embed(text: str) -> list[float]:
    """A deterministic unit vector of dimension 16 derived from a hash of ``text``."""
    raw = struct.unpack(">16h", hashlib.sha256(text.encode()).digest())
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return [v / norm for v in raw]


class SimulatedTeacher:
    """An ASGI app (Starlette inside) playing an LLM that classifies from known answers."""

    def __init__(
        self,
        answers: Mapping[str, str],
        *,
        labels: Sequence[str] | None = None,
        latency_s: float = 0.0,
        jitter_s: float = 0.0,
        error_rate: float = 0.0,
        error_status: int = 500,
        noise: float = 0.0,
        output_format: Literal["text", "json"] = "text",
        json_field: str = "label",
        seed: int = 0,
        stream_chunk_chars: int = 4,
        chunk_delay_s: float = 0.0,
        require_key: str | None = None,
        models: Sequence[str] = ("sim-teacher",),
        fault: str | None = None,
        spellings: Mapping[str, Sequence[str]] | None = None,
        tool_answers: Mapping[str, Any] | None = None,
        noise_by_label: Mapping[str, float] | None = None,
    ) -> None:
        self.answers: dict[str, str] = {k.strip(): v for k, v in answers.items()}
        self.relabel: dict[str, str] = {}
        self.labels = list(labels) if labels is not None else None
        self.latency_s, self.jitter_s, self.chunk_delay_s = latency_s, jitter_s, chunk_delay_s
        self.error_rate, self.error_status, self.noise = error_rate, error_status, noise
        self.output_format, self.json_field = output_format, json_field
        self.stream_chunk_chars, self.require_key = stream_chunk_chars, require_key
        self.models = list(models)
        self.fault = fault  # one of FAULTS: every chat answer is broken that way
        # How the teacher writes a label: {label: [raw answer, ...]}, one picked by a hash
        # of the input (so an input is always answered alike); default: the label itself.
        self.spellings = {k: list(v) for k, v in (spellings or {}).items()}
        self.tool_answers = dict(tool_answers or {})  # user text -> calls or a reply
        # A smaller model's errors: {true label: share of its inputs answered wrongly}. Which
        # inputs, and the wrong label, follow from a hash of the input and the seed, so a
        # model errs on the same inputs every time it is asked (as one at temperature 0).
        self.noise_by_label = dict(noise_by_label or {})
        self.seed = seed
        self._rng = random.Random(seed)
        self._lock = threading.Lock()  # configure() runs on the caller's thread, not the loop's
        self._counts = _new_counts()
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/embeddings", self._embeddings, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/_sim/config", self._config, methods=["POST"]),
                Route("/_sim/stats", self._stats, methods=["GET"]),
            ],
            exception_handlers={_Reject: _error},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    # -- runtime control -------------------------------------------------------------------
    def configure(self, **changes: Any) -> None:
        """Change behaviour mid-run: any constructor setting, plus ``answers_override`` (merged
        into answers), ``relabel`` {old: new} (simulated drift) and ``reset_stats``."""
        unknown = set(changes) - _CONFIG_KEYS - {"answers", "answers_override", "relabel", "seed"}
        if unknown - {"reset_stats"}:
            raise ValueError(f"unknown simulated-teacher settings: {sorted(unknown)}")
        with self._lock:
            for key, value in changes.items():
                if key == "reset_stats":
                    self._counts = _new_counts() if value else self._counts
                elif key == "answers_override":
                    self.answers.update({k.strip(): v for k, v in value.items()})
                elif key == "answers":
                    self.answers = {k.strip(): v for k, v in value.items()}
                elif key == "relabel":
                    self.relabel.update(value)
                elif key == "seed":
                    self._rng, self.seed = random.Random(value), value
                else:
                    setattr(self, key, list(value) if key in ("labels", "models") else value)

    def stats(self) -> dict[str, Any]:
        """Counts for tests: requests, by path, injected errors, Authorization headers seen."""
        with self._lock:
            return {
                k: v.copy() if isinstance(v, dict | list) else v for k, v in self._counts.items()
            }

    def true_label(self, text: str) -> str:
        """The answer before noise: mapped label, else a hashed pick from ``labels``, else a
        deterministic non-label reply (a request that is not a classification)."""
        text = text.strip()
        if text in self.answers:
            label = self.answers[text]
        elif self.labels:
            label = self.labels[_stable_hash(text) % len(self.labels)]
        elif self.answers:
            label = "unknown"
        else:
            return f"echo: {text[:40]}"
        return self.relabel.get(label, label)

    def _answer(self, text: str) -> str:
        """The raw answer text: a (maybe noisy) label, rendered as this teacher writes it."""
        label = self.answer_label(text)
        spelled = self.spellings.get(label)
        if spelled:
            return spelled[_stable_hash(text) % len(spelled)]
        return self._render(label)

    def answer_label(self, text: str) -> str:
        """The label it answers `text` with, noise included (what a client would parse)."""
        label = self.true_label(text)
        if label in self.noise_by_label:
            return self._fixed_error(text, label, self.noise_by_label[label])
        with self._lock:
            if self.noise <= 0 or self._rng.random() >= self.noise:
                return label
            pool = self.labels or sorted(set(self.answers.values()))
            others = [x for x in pool if self.relabel.get(x, x) != label]
            return self._rng.choice(others) if others else f"not_{label}"

    def _fixed_error(self, text: str, label: str, noise: float) -> str:
        draw = _stable_hash(f"{self.seed}:{text.strip()}")
        if (draw % 1_000_000) / 1_000_000 >= noise:
            return label
        pool = sorted(x for x in (self.labels or set(self.answers.values())) if x != label)
        return pool[(draw // 1_000_000) % len(pool)] if pool else f"not_{label}"

    def _render(self, label: str) -> str:
        if self.output_format == "json":
            return json.dumps({self.json_field: label})
        return label

    # -- HTTP ------------------------------------------------------------------------------
    async def _admit(self, request: Request) -> dict[str, Any]:
        """Count the request, check the key, parse the JSON body, maybe inject an error."""
        auth = request.headers.get("authorization")
        with self._lock:
            self._counts["requests"] += 1
            by_path, path = self._counts["by_path"], request.url.path
            by_path[path] = by_path.get(path, 0) + 1
            self._counts["auth_headers"].append(auth)
        if self.require_key is not None and auth != f"Bearer {self.require_key}":
            raise _Reject(401, "Incorrect API key provided.", "invalid_api_key")
        body: Any = {}
        if request.method == "POST":
            try:
                body = json.loads(await request.body())
            except (ValueError, UnicodeDecodeError):
                raise _Reject(400, "The request body is not valid JSON.", "invalid_json") from None
            if not isinstance(body, dict):
                raise _Reject(400, "The request body must be a JSON object.")
        with self._lock:
            fail = self.error_rate > 0 and self._rng.random() < self.error_rate
            self._counts["errors_injected"] += fail
        if fail:
            await self._delay()  # a failing upstream is slow too
            raise _Reject(self.error_status, "Simulated upstream error.", "simulated")
        return cast(dict[str, Any], body)

    async def _delay(self) -> None:
        with self._lock:
            delay = self.latency_s + self._rng.uniform(0.0, self.jitter_s)
        await asyncio.sleep(delay)

    async def _chat(self, request: Request) -> Response:
        body = await self._admit(request)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _Reject(400, "'messages' must be a non-empty list.", "invalid_messages")
        offered = body.get("tools")
        tools = offered if isinstance(offered, list) else []
        names = [t.get("function", {}).get("name") for t in tools if isinstance(t, dict)]
        seen = {"model": body.get("model"), "tool_choice": body.get("tool_choice"), "tools": names}
        with self._lock:
            self._counts["chat_requests"] = [*self._counts["chat_requests"][-199:], seen]
        users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        text = _text_of(users[-1].get("content")).strip() if users else ""
        n = body.get("n") or 1
        if not isinstance(n, int) or not 1 <= n <= 128:
            raise _Reject(400, "'n' must be an integer from 1 to 128.", "invalid_n")
        contents = [self._answer(text) for _ in range(n)]
        model = str(body.get("model", "sim-teacher"))
        if model not in self.models:
            self.models.append(model)  # "known" models: configured ones plus any asked for
        p_tok = sum(_tokens(_text_of(m.get("content"))) for m in messages if isinstance(m, dict))
        c_tok = sum(_tokens(c) for c in contents)
        usage = {"prompt_tokens": p_tok, "completion_tokens": c_tok, "total_tokens": p_tok + c_tok}
        head = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_sim_teacher",
        }
        if body.get("tools"):
            return await tool_response(self.tool_answers, body, text, head, usage, self._delay)
        if body.get("stream"):
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
            gen = self._stream(head, contents, usage if include_usage else None)
            return StreamingResponse(
                gen, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
            )
        await self._delay()
        replies = [{"role": "assistant", "content": c, "refusal": None} for c in contents]
        choices = [_choice(i, "stop", message=m) for i, m in enumerate(replies)]
        completion = {**head, "object": "chat.completion", "choices": choices, "usage": usage}
        if self.fault == "non_json":
            return Response(b"<html>502 Bad Gateway</html>", media_type="text/html")
        if self.fault == "truncated":
            return Response(json.dumps(completion).encode()[:40], media_type="application/json")
        if self.fault == "no_choices":
            return JSONResponse({**completion, "choices": []})
        return JSONResponse(completion)

    async def _stream(
        self, head: dict[str, Any], contents: list[str], usage: dict[str, int] | None
    ) -> AsyncIterator[str]:
        """SSE events, each yielded (hence flushed) as produced; latency before the first."""

        def event(choices: list[dict[str, Any]], **extra: Any) -> str:
            chunk = {**head, "object": "chat.completion.chunk", "choices": choices, **extra}
            return f"data: {json.dumps(chunk)}\n\n"

        await self._delay()
        size = max(1, self.stream_chunk_chars)
        for i, content in enumerate(contents):
            yield event([_choice(i, delta={"role": "assistant", "content": ""})])
            for start in range(0, len(content), size):
                if self.chunk_delay_s > 0:
                    await asyncio.sleep(self.chunk_delay_s)
                yield event([_choice(i, delta={"content": content[start : start + size]})])
                if self.fault == "stream_cut":
                    return  # the connection ends mid-answer: no finish_reason, no [DONE]
            if self.fault == "error_event":
                error = {"message": "Simulated failure mid-stream.", "type": "server_error"}
                yield f"data: {json.dumps({'error': error})}\n\n"
                return
            yield event([_choice(i, "stop", delta={})])
        if usage is not None:
            yield event([], usage=usage)
        if self.fault != "stream_no_done":
            yield "data: [DONE]\n\n"

    async def _embeddings(self, request: Request) -> Response:
        body = await self._admit(request)
        raw = body.get("input")
        items = raw if isinstance(raw, list) and not all(isinstance(x, int) for x in raw) else [raw]
        if not raw:
            raise _Reject(400, "'input' is required.", "invalid_input")
        texts = [x if isinstance(x, str) else json.dumps(x) for x in items]
        await self._delay()
        vecs: list[Any] = [embed(t) for t in texts]
        if body.get("encoding_format") == "base64":  # the openai client's default
            vecs = [base64.b64encode(struct.pack(f"<{EMBED_DIM}f", *v)).decode() for v in vecs]
        data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vecs)]
        tokens = sum(_tokens(t) for t in texts)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        model = str(body.get("model", ""))
        return JSONResponse({"object": "list", "data": data, "model": model, "usage": usage})

    async def _models(self, request: Request) -> Response:
        await self._admit(request)
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "sim"} for m in self.models]
        return JSONResponse({"object": "list", "data": data})

    async def _config(self, request: Request) -> Response:
        try:
            changes = json.loads(await request.body())
            self.configure(**changes)
        except (ValueError, TypeError, AttributeError) as exc:
            raise _Reject(400, f"Bad simulated-teacher config: {exc}") from None
        return JSONResponse({"ok": True})

    async def _stats(self, request: Request) -> Response:
        return JSONResponse(self.stats())


@contextmanager
def run_sim_teacher(
    teacher: SimulatedTeacher, host: str = "127.0.0.1", port: int = 0, timeout_s: float = 10.0
) -> Iterator[str]:
    """Serve ``teacher`` with uvicorn on a background thread; yield ``http://host:port/v1``."""
    with serve_in_thread(
        teacher, host, port, name="sim-teacher", timeout_s=timeout_s, **_UVICORN_OPTS
    ) as url:
        yield f"{url}/v1"
