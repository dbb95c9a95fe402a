"""The YAML configuration: validated once at start-up, with errors that name the key.

`model_list` follows LiteLLM's own convention so that a LiteLLM proxy config can be
reused. Any string value of the form ``os.environ/NAME`` is read from the
environment; secrets (``api_key`` and the client keys) are kept as ``SecretStr`` so
that they never show up in a ``repr``, a log line or an error.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from router.settings import FitOptions

ENV_PREFIX = "os.environ/"


class ConfigError(ValueError):
    """A configuration problem, phrased for the person who wrote the file."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LiteLLMParams(BaseModel):
    """Passed to LiteLLM as keyword arguments; unknown keys are LiteLLM's business."""

    model_config = ConfigDict(extra="allow")

    model: str
    api_key: SecretStr | None = None
    api_base: str | None = None
    timeout: float | None = Field(default=None, gt=0)

    def call_kwargs(self) -> dict[str, Any]:
        """The keyword arguments for ``litellm.acompletion``, secrets unwrapped."""
        kwargs = self.model_dump(exclude_none=True)
        if self.api_key is not None:
            kwargs["api_key"] = self.api_key.get_secret_value()
        return kwargs


class ModelEntry(_Strict):
    model_name: str = Field(min_length=1)
    litellm_params: LiteLLMParams


class TaskMatch(_Strict):
    """A request belongs to the task when every given criterion holds."""

    model: str | None = None
    system_prompt_contains: str | None = None

    @model_validator(mode="after")
    def _needs_one(self) -> TaskMatch:
        if self.model is None and self.system_prompt_contains is None:
            raise ValueError("give `model`, `system_prompt_contains`, or both")
        return self


class TaskInput(_Strict):
    """Which text of the conversation is the classifier's input."""

    message: Literal["last_user", "first_user", "all_user"] = "last_user"
    pattern: str | None = Field(
        default=None,
        description="optional regex; its first group (or whole match) is the input",
    )

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value


class TaskOutput(_Strict):
    format: Literal["text", "json"] = "text"
    field: str | None = None

    @model_validator(mode="after")
    def _json_needs_field(self) -> TaskOutput:
        if self.format == "json" and not self.field:
            raise ValueError("`field` is required when format is json")
        return self


class TaskConfig(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    match: TaskMatch
    teacher: str
    kind: Literal["classify", "tools"] = Field(
        default="classify",
        description="tools: requests carry `tools`, and the label is the teacher's tool choice",
    )
    mode: Literal["serve", "shadow"] = Field(
        default="serve",
        description="shadow: score every request, but let the teacher answer all of them",
    )
    narrow_to: str | None = Field(
        default=None,
        description="tools: the model_name that fills a call's arguments when only its "
        "tool is certain (default: the teacher)",
    )
    prompt: str | None = Field(
        default=None,
        description="system prompt /v1/classify sends to the teacher; default: the matched text",
    )
    input: TaskInput = Field(default_factory=TaskInput)
    labels: list[str] | None = None
    output: TaskOutput = Field(default_factory=TaskOutput)
    target: float = Field(default=0.95, gt=0, lt=1)
    confidence: float = Field(default=0.95, gt=0, lt=1)
    min_coverage: float = Field(default=0.2, ge=0, le=1)
    horizon: int = Field(
        default=0,
        ge=0,
        description="0: target is promised on average; N: on the next N handled requests",
    )
    ood_quantile: float = Field(
        default=0.01,
        ge=0,
        lt=0.5,
        description="share of in-distribution inputs the out-of-distribution check may "
        "defer; higher defers more unseen topics at some cost in coverage; 0 disables it",
    )
    audit_rate: float = Field(
        default=0.02, ge=0, le=1, description="share of served traffic sampled, at least"
    )
    audit_boost: int = Field(
        default=1000,
        ge=0,
        description="while the task has few sampled traces, sample "
        "min(1, audit_boost / sampled traces so far) instead; 0: audit_rate only",
    )
    probation_boost: int = Field(
        default=40,
        ge=0,
        description="a newly served version samples min(1, probation_boost / (its audits + 1)) "
        "of its traffic for the teacher, so it proves itself within hours; 0: off",
    )
    embedder: str = Field(
        default="tfidf",
        description="tfidf, an encoder folder (model.onnx, tokenizer.json), or tfidf+FOLDER",
    )
    encoder_weight: float = Field(
        default=2.0, gt=0, description="scale of the encoder block when joined with TF-IDF"
    )

    @field_validator("labels")
    @classmethod
    def _distinct(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if not value:
                raise ValueError("an empty label set would reject every answer")
            folded = [v.strip().lower() for v in value]
            if len(set(folded)) != len(folded):
                raise ValueError("labels must be distinct (compared without case)")
        return value


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    api_keys: list[SecretStr] = []
    max_body_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    upstream_timeout_seconds: float = Field(default=60.0, gt=0)
    # Longer than clients keep idle connections (httpx 5 s, aiohttp 15 s), so that the
    # client always drops a pooled connection first: at equal timeouts a request can be
    # sent on a socket the server is closing, and fails with a connection error.
    keep_alive_seconds: int = Field(default=75, gt=0)
    # A client must send a request's headers, and then its body, within this long.
    read_timeout_seconds: float = Field(default=30.0, gt=0)
    # auto: OpenAI-compatible upstreams (openai/...) by byte relay, the rest by LiteLLM;
    # litellm: every call through LiteLLM (its callbacks and logging, at 5-10 ms of CPU a call).
    upstream_client: Literal["auto", "litellm"] = "auto"

    @field_validator("api_keys")
    @classmethod
    def _no_blank_keys(cls, keys: list[SecretStr]) -> list[SecretStr]:
        for i, key in enumerate(keys):
            if not key.get_secret_value().strip():
                raise ValueError(
                    f"api_keys[{i}] is empty or blank (an unset or empty environment "
                    "variable?): an empty key would let anyone in"
                )
        return keys

    @model_validator(mode="after")
    def _keys_off_loopback(self) -> ServerConfig:
        if not self.api_keys and not is_loopback(self.host):
            raise ValueError(
                f"api_keys is empty but host {self.host!r} is not a loopback address; "
                "set api_keys or bind to 127.0.0.1"
            )
        return self


class StoreConfig(_Strict):
    url: str = "sqlite+aiosqlite:///tracer.db"
    queue_size: int = Field(default=10_000, gt=0)


class ArtifactsConfig(_Strict):
    dir: Path = Path(".tracer")


class RefitConfig(_Strict):
    min_new_traces: int = Field(default=200, gt=0)
    interval_seconds: float = Field(default=300, gt=0)
    # A refit also waits until the traces grew by this share since the last fit, so that
    # fits (each spending a share of delta) grow in number like the log of the traffic.
    growth: float = Field(default=0.5, ge=0)


class Config(_Strict):
    model_list: list[ModelEntry] = Field(min_length=1)
    tasks: list[TaskConfig] = []
    server: ServerConfig = Field(default_factory=ServerConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    artifacts: ArtifactsConfig = Field(default_factory=ArtifactsConfig)
    refit: RefitConfig = Field(default_factory=RefitConfig)

    @model_validator(mode="after")
    def _cross_references(self) -> Config:
        names = [m.model_name for m in self.model_list]
        if len(set(names)) != len(names):
            raise ValueError("model_list has a model_name more than once")
        task_names = [t.name for t in self.tasks]
        if len(set(task_names)) != len(task_names):
            raise ValueError("two tasks share a name")
        for i, task in enumerate(self.tasks):
            if task.teacher not in names:
                raise ValueError(
                    f"tasks[{i}].teacher: {task.teacher!r} is not a model_name in "
                    f"model_list (known: {', '.join(names)})"
                )
            if task.narrow_to is not None and task.kind != "tools":
                raise ValueError(f"tasks[{i}].narrow_to is for tasks of kind tools")
            if task.narrow_to is not None and task.narrow_to not in names:
                raise ValueError(
                    f"tasks[{i}].narrow_to: {task.narrow_to!r} is not a model_name in model_list"
                )
        return self

    def model(self, name: str) -> ModelEntry | None:
        return next((m for m in self.model_list if m.model_name == name), None)

    def task(self, name: str) -> TaskConfig | None:
        return next((t for t in self.tasks if t.name == name), None)

    def secrets(self) -> list[str]:
        """Every secret value, so that error messages can be scrubbed of them."""
        values = [k.get_secret_value() for k in self.server.api_keys]
        for entry in self.model_list:
            if entry.litellm_params.api_key is not None:
                values.append(entry.litellm_params.api_key.get_secret_value())
        return [v for v in values if v]


def resolve_env(value: Any, env: Mapping[str, str], path: str = "") -> Any:
    """Replace ``os.environ/NAME`` strings, naming the key when NAME is unset."""
    if isinstance(value, str) and value.startswith(ENV_PREFIX):
        name = value[len(ENV_PREFIX) :]
        if name not in env:
            raise ConfigError(f"{path or 'value'}: environment variable {name} is not set")
        return env[name]
    if isinstance(value, dict):
        return {k: resolve_env(v, env, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_env(v, env, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def _location(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def parse_config(raw: Any, env: Mapping[str, str] | None = None, source: str = "config") -> Config:
    """Validate an already-parsed YAML document."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys")
    resolved = resolve_env(raw, os.environ if env is None else env)
    try:
        return Config.model_validate(resolved)
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_url=False, include_input=False):
            message = str(err["msg"]).removeprefix("Value error, ")
            lines.append(f"  {_location(tuple(err['loc']))}: {message}")
        raise ConfigError(f"{source} is not valid:\n" + "\n".join(lines)) from None


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    return parse_config(raw, env, source=str(path))


def fit_options(task: TaskConfig) -> FitOptions:
    """What a refit of `task` fits with: the one settings object the trainer reads."""
    return FitOptions(
        target=task.target,
        confidence=task.confidence,
        min_coverage=task.min_coverage,
        horizon=task.horizon,
        ood_quantile=task.ood_quantile,
        labels=tuple(task.labels) if task.labels else None,
        embedder=task.embedder,
        encoder_weight=task.encoder_weight,
        output_format=task.output.format,
        kind=task.kind,
        task=task.name,
    )
