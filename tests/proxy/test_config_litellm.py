"""A config as users bring it: keys from the environment only where needed, paths beside
the file, and a LiteLLM proxy config read unchanged (its load balancing and callbacks)."""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from pathlib import Path

import httpx
import litellm
import pytest
import yaml

from proxy.config import ConfigError, load_config, parse_config
from proxy.litellm_config import apply_callbacks
from proxy.relay import relayable
from proxy.sim.teacher import SimulatedTeacher, run_sim_teacher
from proxy.upstream import Balancer, Upstream
from tests.support import ANSWERS, LABELS, running_proxy

MODEL = {"model_name": "m", "litellm_params": {"model": "openai/m", "api_key": "os.environ/KEY"}}

# LiteLLM's documented proxy config (docs.litellm.ai/docs/proxy/configs and
# /proxy/load_balancing), as an existing deployment has it, plus this proxy's tasks.
LITELLM_CONFIG = """
model_list:
  - model_name: gpt-4o
    litellm_params:
      model: azure/gpt-4o-eu
      api_base: https://my-endpoint-europe.openai.azure.com/
      api_key: os.environ/AZURE_API_KEY_EU
      rpm: 6
  - model_name: gpt-4o
    litellm_params:
      model: azure/gpt-4o-ca
      api_base: https://my-endpoint-canada.openai.azure.com/
      api_key: os.environ/AZURE_API_KEY_CA
      rpm: 6
  - model_name: gpt-3.5-turbo
    litellm_params:
      model: openai/gpt-3.5-turbo
      api_key: os.environ/OPENAI_API_KEY
      weight: 1
    model_info:
      id: deployment-1
      mode: chat
      input_cost_per_token: 0.0000005
      output_cost_per_token: 0.0000015
litellm_settings:
  drop_params: true
  num_retries: 3
  request_timeout: 600
  success_callback: ["langfuse"]
  callbacks: custom_callbacks.proxy_handler_instance
router_settings:
  routing_strategy: simple-shuffle
  redis_host: localhost
  redis_password: os.environ/REDIS_PASSWORD
  num_retries: 2
general_settings:
  master_key: os.environ/LITELLM_MASTER_KEY
  database_url: os.environ/DATABASE_URL
  alerting: ["slack"]
environment_variables:
  REDIS_HOST: redis.local
  REDIS_PORT: 6379
  AZURE_API_KEY_CA: sk-from-the-file
tasks:
  - name: banking
    match: {model: banking-intent}
    teacher: gpt-4o
store: {url: "sqlite+aiosqlite:///data/tracer.db"}
artifacts: {dir: models}
"""


# -- os.environ/ references ---------------------------------------------------------------
def test_an_unset_key_is_kept_until_a_verb_needs_it():
    config = parse_config({"model_list": [MODEL]}, env={})
    assert config.missing_env == {"model_list[0].litellm_params.api_key": "KEY"}
    config.require_env("artifacts", "store")  # what the admin verbs read: fine
    with pytest.raises(ConfigError, match=r"model_list\[0\].litellm_params.api_key: environment "
                       "variable KEY is not set"):  # fmt: skip
        config.require_env()  # what `tracer serve` checks
    with pytest.raises(ConfigError, match="KEY is not set"):
        config.secrets()  # building a server reads every secret: never the reference


def test_a_set_key_is_read_and_kept_secret():
    config = parse_config({"model_list": [MODEL]}, env={"KEY": "sk-secret-value"})
    config.require_env()
    assert config.model_list[0].litellm_params.call_kwargs()["api_key"] == "sk-secret-value"
    assert "sk-secret-value" not in repr(config)


# -- paths --------------------------------------------------------------------------------
def test_relative_paths_are_relative_to_the_config_file(tmp_path, monkeypatch):
    folder = tmp_path / "run2"
    folder.mkdir()
    (folder / "config.yaml").write_text(
        yaml.safe_dump(
            {
                "model_list": [MODEL],
                "tasks": [
                    {
                        "name": "t",
                        "match": {"model": "a"},
                        "teacher": "m",
                        "embedder": "tfidf+encoders/minilm",
                    }
                ],
                "store": {"url": "sqlite+aiosqlite:///tracer.db"},
                "artifacts": {"dir": ".tracer"},
            }
        )
    )
    monkeypatch.chdir(tmp_path)  # run from another folder, with a relative --config
    config = load_config("run2/config.yaml", env={})
    assert config.store.url == f"sqlite+aiosqlite:///{folder / 'tracer.db'}"
    assert config.artifacts.dir == folder / ".tracer"
    assert config.tasks[0].embedder == f"tfidf+{folder / 'encoders' / 'minilm'}"
    assert config.base_dir == folder
    for url in ("sqlite+aiosqlite:////abs/t.db", "postgresql+asyncpg://u:p@h/db", "os.environ/DB"):
        raw = {"model_list": [MODEL], "store": {"url": url}}
        assert parse_config(raw, env={}, base_dir=folder).store.url == url


# -- a LiteLLM config ---------------------------------------------------------------------
def test_a_litellm_proxy_config_is_read_as_it_is(tmp_path, caplog):
    path = tmp_path / "litellm.yaml"
    path.write_text(LITELLM_CONFIG)
    env = {"AZURE_API_KEY_EU": "sk-eu", "OPENAI_API_KEY": "sk-oa", "LITELLM_MASTER_KEY": "mk"}
    with caplog.at_level(logging.WARNING, logger="tracer.config"):
        config = load_config(path, env=env)
        load_config(path, env=env)  # warned once, not twice
    assert [m.model_name for m in config.model_list] == ["gpt-4o", "gpt-4o", "gpt-3.5-turbo"]
    # environment_variables resolve references (and `tracer serve` exports them)
    assert config.model_list[1].litellm_params.call_kwargs()["api_key"] == "sk-from-the-file"
    # the master key is a client key
    assert [k.get_secret_value() for k in config.server.api_keys] == ["mk"]
    # routing keys choose an entry; they never reach the upstream, and the relay still applies
    params = config.model_list[2].litellm_params
    assert params.weight == 1 and "weight" not in params.call_kwargs()
    assert relayable(config.model_list[2])
    # what is ignored is named once; what is honoured is not
    ignored = [r.getMessage() for r in caplog.records]
    for key in ("litellm_settings.drop_params", "litellm_settings.callbacks",
                "router_settings.redis_host", "general_settings.database_url"):  # fmt: skip
        assert sum(key in m for m in ignored) == 1, ignored
    assert not any("routing_strategy" in m or "master_key" in m for m in ignored)
    # unset references in ignored sections are not needed; needed ones still are checked
    assert config.missing_env["general_settings.database_url"] == "DATABASE_URL"
    config.require_env()
    without = {k: v for k, v in env.items() if k != "AZURE_API_KEY_EU"}
    with pytest.raises(ConfigError, match=r"model_list\[0\].litellm_params.api_key: .*EU"):
        load_config(path, env=without).require_env()


def test_callbacks_are_set_on_litellm_from_the_config_folder(tmp_path, monkeypatch):
    (tmp_path / "custom_callbacks.py").write_text(
        "from litellm.integrations.custom_logger import CustomLogger\n"
        "class Handler(CustomLogger):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.calls = []\n"
        "    async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):\n"
        "        self.calls.append(kwargs.get('model'))\n"
        "proxy_handler_instance = Handler()\n"
    )
    monkeypatch.setattr(litellm, "callbacks", [])
    monkeypatch.setattr(litellm, "success_callback", [])
    sim = SimulatedTeacher(ANSWERS, labels=LABELS)
    with run_sim_teacher(sim) as teacher_url:
        raw = {
            "model_list": [{"model_name": "teacher", "litellm_params": {
                "model": "openai/teacher", "api_key": "k", "api_base": teacher_url}}],
            "litellm_settings": {"callbacks": ["custom_callbacks.proxy_handler_instance"]},
            "server": {"upstream_client": "litellm"},
            "store": {"url": f"sqlite+aiosqlite:///{tmp_path / 't.db'}"},
        }  # fmt: skip
        config = parse_config(raw, env={}, base_dir=tmp_path)
        assert apply_callbacks(config.litellm_settings, config.base_dir) == ["callbacks"]
        handler = litellm.callbacks[0]
        assert type(handler).__name__ == "Handler"
        with running_proxy(config) as base:
            body = {"model": "teacher", "messages": [{"role": "user", "content": "hi"}]}
            assert httpx.post(f"{base}/chat/completions", json=body, timeout=30).status_code == 200
            for _ in range(100):
                if handler.calls:
                    break
                time.sleep(0.05)
    assert handler.calls, "the LiteLLM callback was not called"


def test_repeated_model_names_balance_load_by_weight():
    def entry(name: str, **params: object) -> dict[str, object]:
        params = {"model": "openai/m", "api_key": "k", **params}
        return {"model_name": name, "litellm_params": params}

    def shares(*entries: dict[str, object]) -> dict[str | None, float]:
        config = parse_config({"model_list": list(entries)}, env={})
        balancer = Balancer(config.models("m"), random.Random(0))
        picks = Counter(balancer.pick().litellm_params.api_base for _ in range(4000))
        return {base: round(n / 4000, 1) for base, n in picks.items()}

    a, b = {"api_base": "http://a"}, {"api_base": "http://b"}
    assert shares(entry("m", **a, weight=4), entry("m", **b, weight=1)) == {
        "http://a": 0.8,
        "http://b": 0.2,
    }
    assert shares(entry("m", **a, rpm=100), entry("m", **b, rpm=400)) == {
        "http://a": 0.2,
        "http://b": 0.8,
    }
    assert shares(entry("m", **a), entry("m", **b)) == {"http://a": 0.5, "http://b": 0.5}
    upstream = Upstream(parse_config({"model_list": [entry("solo"), entry("m")]}, env={}))
    assert upstream.entry("solo") is upstream.entry("solo")
    assert upstream.entry("nothing") is None


def test_repeated_model_names_spread_requests_over_their_upstreams(tmp_path):
    one, two = SimulatedTeacher(ANSWERS, labels=LABELS), SimulatedTeacher(ANSWERS, labels=LABELS)
    with run_sim_teacher(one) as url_one, run_sim_teacher(two) as url_two:
        raw = {
            "model_list": [
                {"model_name": "teacher", "litellm_params": {
                    "model": "openai/teacher", "api_key": "k", "api_base": url, "rpm": rpm}}
                for url, rpm in ((url_one, 100), (url_two, 100))
            ],
            "tasks": [{"name": "banking", "match": {"model": "banking-intent"},
                       "teacher": "teacher", "labels": LABELS}],
            "store": {"url": f"sqlite+aiosqlite:///{tmp_path / 't.db'}"},
        }  # fmt: skip
        with running_proxy(parse_config(raw, env={})) as base:
            for model in ["teacher"] * 20 + ["banking-intent"] * 20:
                body = {
                    "model": model,
                    "messages": [{"role": "user", "content": "where is my new card"}],
                }
                reply = httpx.post(f"{base}/chat/completions", json=body, timeout=30)
                assert reply.status_code == 200, reply.text
    counts = [len(sim.stats()["chat_requests"]) for sim in (one, two)]
    assert sum(counts) == 40 and min(counts) >= 8, counts  # P(fewer than 8 of 40) < 1e-5


def test_the_example_config_needs_no_key_to_be_read(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    config = load_config(Path(__file__).resolve().parents[2] / "config.example.yaml")
    assert config.missing_env == {"model_list[0].litellm_params.api_key": "OPENAI_API_KEY"}
    assert config.tasks[0].match.system_prompt_contains is None  # the README's snippet matches
