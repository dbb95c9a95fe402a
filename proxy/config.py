"""The YAML configuration: validated once at start-up, with errors that name the key.

`model_list` follows LiteLLM's own convention, and a LiteLLM proxy config is read as it
is (`proxy/litellm_config.py`: what of its other sections applies). A string value of the
form ``os.environ/NAME`` is read from the environment, and one whose variable is unset is
kept until a verb needs it (`proxy/config_env.py`); secrets (``api_key`` and the client
keys) are kept as ``SecretStr`` so that they never show up in a ``repr``, a log line or an
error. Paths are relative to the config file's folder (`proxy/paths.py`).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from router.settings import FitOptions

from . import litellm_config
from .config_env import ENV_PREFIX, env_name, resolve_env, under, unset_message
from .config_task import TaskConfig, TaskInput, TaskMatch, TaskOutput
from .paths import absolute_embedder, absolute_path, absolute_store_url

__all__ = [
    "ENV_PREFIX",
    "Config",
    "ConfigError",
    "ModelEntry",
    "TaskConfig",
    "TaskInput",
    "TaskMatch",
    "TaskOutput",
    "fit_options",
    "is_loopback",
    "load_config",
    "parse_config",
    "resolve_env",
]


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
    # LiteLLM's load-balancing keys: they choose among a model_name's entries, and are
    # never sent upstream (excluded from every dump, so the byte relay still applies).
    weight: float | None = Field(default=None, ge=0, exclude=True)
    rpm: float | None = Field(default=None, ge=0, exclude=True)
    tpm: float | None = Field(default=None, ge=0, exclude=True)
    order: int | None = Field(default=None, exclude=True)
    max_parallel_requests: int | None = Field(default=None, exclude=True)

    def call_kwargs(self) -> dict[str, Any]:
        """The keyword arguments for ``litellm.acompletion``, secrets unwrapped."""
        kwargs = self.model_dump(exclude_none=True)
        if self.api_key is not None:
            kwargs["api_key"] = self.api_key.get_secret_value()
        return kwargs


class ModelEntry(_Strict):
    model_name: str = Field(min_length=1)
    litellm_params: LiteLLMParams
    # LiteLLM's own key: prices (input_cost_per_token, output_cost_per_token, and our
    # input_cost_per_request) for a model its price map does not know, or overrides.
    model_info: dict[str, Any] | None = None


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    # Processes serving the port (`tracer serve --workers N`); they share only the store.
    workers: int = Field(default=1, ge=1, le=256)
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
    # LiteLLM's own sections, accepted as they are (proxy/litellm_config.py).
    litellm_settings: dict[str, Any] = {}
    router_settings: dict[str, Any] = {}
    general_settings: dict[str, Any] = {}
    environment_variables: dict[str, SecretStr] = {}
    _missing_env: dict[str, str] = PrivateAttr(default_factory=dict)
    _base_dir: Path | None = PrivateAttr(default=None)

    @field_validator("environment_variables", mode="before")
    @classmethod
    def _as_text(cls, value: Any) -> Any:
        if isinstance(value, dict):  # LiteLLM's form: numbers too; an empty value is unset
            return {k: str(v) for k, v in value.items() if v is not None}
        return value

    @model_validator(mode="after")
    def _cross_references(self) -> Config:
        names = list(dict.fromkeys(m.model_name for m in self.model_list))
        task_names = [t.name for t in self.tasks]
        if len(set(task_names)) != len(task_names):
            raise ValueError("two tasks share a name")
        for i, task in enumerate(self.tasks):
            if task.teacher not in names:
                raise ValueError(
                    f"tasks[{i}].teacher: {task.teacher!r} is not a model_name in "
                    f"model_list (known: {', '.join(names)})"
                )
            for lane in task.lanes:
                if lane not in names:
                    raise ValueError(
                        f"tasks[{i}].lanes: {lane!r} is not a model_name in model_list "
                        f"(known: {', '.join(names)})"
                    )
                if lane == task.teacher:
                    raise ValueError(
                        f"tasks[{i}].lanes: {lane!r} is the task's teacher; a lane is a cheaper "
                        "model that may stand in for it"
                    )
            if len(set(task.lanes)) != len(task.lanes):
                raise ValueError(f"tasks[{i}].lanes lists a model twice")
            if task.narrow_to is not None and task.kind != "tools":
                raise ValueError(f"tasks[{i}].narrow_to is for tasks of kind tools")
            if task.narrow_to is not None and task.narrow_to not in names:
                raise ValueError(
                    f"tasks[{i}].narrow_to: {task.narrow_to!r} is not a model_name in model_list"
                )
        return self

    def model(self, name: str) -> ModelEntry | None:
        """The first entry of a model_name (`Upstream.entry` balances over all of them)."""
        return next((m for m in self.model_list if m.model_name == name), None)

    def models(self, name: str) -> list[ModelEntry]:
        """Every entry of a model_name: LiteLLM's load balancing repeats the name."""
        return [m for m in self.model_list if m.model_name == name]

    def task(self, name: str) -> TaskConfig | None:
        return next((t for t in self.tasks if t.name == name), None)

    @property
    def base_dir(self) -> Path | None:
        """The folder of the file this config was read from (None: built in code)."""
        return self._base_dir

    @property
    def missing_env(self) -> dict[str, str]:
        """Key path -> NAME of every ``os.environ/NAME`` reference whose NAME is unset."""
        return dict(self._missing_env)

    def require_env(self, *prefixes: str) -> None:
        """Raise, naming each one, if a reference under ``prefixes`` is unset.

        No prefix: everything the server uses (not keys of LiteLLM's sections that are
        ignored). `tracer serve` calls this before it starts.
        """
        self._require(lambda path: under(path, prefixes or SERVED))

    def _require(self, needed: Callable[[str], bool]) -> None:
        unset = [unset_message(p, name) for p, name in self._missing_env.items() if needed(p)]
        if unset:
            raise ConfigError("; ".join(unset))

    def secrets(self) -> list[str]:
        """Every secret value, so that error messages can be scrubbed of them.

        Called when a server is built: a secret whose variable is unset would be its
        reference rather than a key, so that is an error here.
        """
        self._require(lambda path: under(path, SECRETS) or bool(_API_KEY.fullmatch(path)))
        values = [k.get_secret_value() for k in self.server.api_keys]
        for entry in self.model_list:
            if entry.litellm_params.api_key is not None:
                values.append(entry.litellm_params.api_key.get_secret_value())
        values += [
            v.get_secret_value()
            for k, v in self.environment_variables.items()
            if re.search(r"KEY|SECRET|TOKEN|PASSWORD", k, re.IGNORECASE)
        ]
        return [v for v in values if v]

    def apply_environment(self) -> None:
        """Set `environment_variables` in this process's environment, as LiteLLM does."""
        self.require_env("environment_variables")
        for name, value in self.environment_variables.items():
            os.environ[name] = value.get_secret_value()


# What a server reads (`require_env` with no prefix) and where secrets are.
SERVED = (
    "model_list", "tasks", "server", "store", "artifacts", "refit", "environment_variables",
    "general_settings.master_key",
    *(f"litellm_settings.{key}" for key in litellm_config.CALLBACK_KEYS),
)  # fmt: skip
SECRETS = ("server.api_keys", "general_settings.master_key", "environment_variables")
_API_KEY = re.compile(r"model_list\[\d+\]\.litellm_params\.api_key")


def _location(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _environment(raw: dict[str, Any], env: Mapping[str, str]) -> Mapping[str, str]:
    """The environment references are read from: `environment_variables` over ``env``."""
    declared = raw.get("environment_variables")
    if not isinstance(declared, dict) or not declared:
        return env
    values = resolve_env(declared, env)
    return {
        **env,
        **{str(k): str(v) for k, v in values.items() if v is not None and env_name(v) is None},
    }


def _with_master_key(raw: dict[str, Any]) -> dict[str, Any]:
    """LiteLLM's `general_settings.master_key` is one more client key."""
    key = litellm_config.master_key(raw.get("general_settings"))
    if key is None:
        return raw
    server = raw.get("server")
    server = dict(server) if isinstance(server, dict) else {}
    keys = server.get("api_keys") or []
    server["api_keys"] = [*keys, key] if isinstance(keys, list) else keys
    return {**raw, "server": server}


def _anchor(config: Config, base: Path) -> None:
    """Make the config's relative paths relative to ``base``, the config file's folder."""
    config._base_dir = base
    config.store.url = absolute_store_url(config.store.url, base)
    config.artifacts.dir = absolute_path(config.artifacts.dir, base)
    for task in config.tasks:
        task.embedder = absolute_embedder(task.embedder, base)


def parse_config(
    raw: Any,
    env: Mapping[str, str] | None = None,
    source: str = "config",
    base_dir: Path | None = None,
) -> Config:
    """Validate an already-parsed YAML document; relative paths are taken from `base_dir`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys")
    env = os.environ if env is None else env
    missing: dict[str, str] = {}
    resolved = _with_master_key(resolve_env(raw, _environment(raw, env), "", missing))
    try:
        config = Config.model_validate(resolved)
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_url=False, include_input=False):
            where = _location(tuple(err["loc"]))
            message = str(err["msg"]).removeprefix("Value error, ")
            unset = missing.get(where)
            lines.append(f"  {unset_message(where, unset) if unset else f'{where}: {message}'}")
        raise ConfigError(f"{source} is not valid:\n" + "\n".join(lines)) from None
    config._missing_env = missing
    if base_dir is not None:
        _anchor(config, base_dir)
    sections = {name: getattr(config, name) for name in litellm_config.SECTIONS}
    litellm_config.warn_ignored(
        litellm_config.ignored(sections, config.server.upstream_client), source
    )
    return config


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
    return parse_config(raw, env, source=str(path), base_dir=path.resolve().parent)


def fit_options(task: TaskConfig) -> FitOptions:
    """What a refit of `task` fits with: the one settings object the trainer reads.

    A live fit keeps no test split: its held-out evidence is the fresh traffic after
    its data cut, on which it is compared and then audited. A test split's share of
    the sampled traces tightens the calibration bound instead.
    """
    defaults = FitOptions()
    return FitOptions(
        test_size=0.0,
        calibration_size=defaults.calibration_size + defaults.test_size,
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
