"""Configuration: validation errors name the key and say what is wrong."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from proxy.config import ConfigError, fit_options, load_config, parse_config

MODEL = {"model_name": "m", "litellm_params": {"model": "openai/m", "api_key": "os.environ/KEY"}}
TASK = {"name": "t", "match": {"model": "alias"}, "teacher": "m"}


def test_example_config_is_valid(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-example")
    config = load_config(Path(__file__).resolve().parents[2] / "config.example.yaml")
    assert config.tasks[0].name == "banking-intent"
    assert config.tasks[0].target == 0.95
    assert config.server.host == "127.0.0.1"


def test_example_config_shows_every_key():
    """The example says "every key is shown": each field of each section appears in it."""
    from pydantic import BaseModel

    from proxy.config import Config

    text = (Path(__file__).resolve().parents[2] / "config.example.yaml").read_text()
    shown = set(re.findall(r"^[\s#-]*([a-z_]+):", text, re.M))
    litellm_own = {
        "litellm_settings",
        "router_settings",
        "general_settings",
        "environment_variables",
    }
    missing: list[str] = []

    def walk(model: type[BaseModel], where: str) -> None:
        for name, field in model.model_fields.items():
            if f"{where}{name}" in ("model_list.litellm_params.", "tasks.input.") or field.exclude:
                continue
            if name not in shown and name not in litellm_own:
                missing.append(f"{where}{name}")
            inner = field.annotation
            args = getattr(inner, "__args__", ())
            for kind in (inner, *args):
                if isinstance(kind, type) and issubclass(kind, BaseModel):
                    walk(kind, f"{where}{name}.")

    walk(Config, "")
    assert not missing, missing


def test_environment_values_are_read_and_kept_secret():
    config = parse_config({"model_list": [MODEL], "tasks": [TASK]}, env={"KEY": "sk-secret-value"})
    params = config.model_list[0].litellm_params
    assert params.call_kwargs()["api_key"] == "sk-secret-value"
    assert "sk-secret-value" not in repr(config)
    assert config.secrets() == ["sk-secret-value"]


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (
            {"model_list": [MODEL], "server": {"port": "os.environ/PORT"}},
            "server.port: environment variable PORT is not set",
        ),
        ({"model_list": [MODEL], "tasks": [{**TASK, "teacher": "x"}]}, "tasks[0].teacher: 'x'"),
        ({"model_list": [MODEL], "tasks": [{**TASK, "target": 1.5}]}, "tasks[0].target"),
        ({"model_list": [MODEL], "tasks": [{**TASK, "match": {}}]}, "tasks[0].match"),
        (
            {"model_list": [MODEL], "tasks": [{**TASK, "output": {"format": "json"}}]},
            "`field` is required",
        ),
        ({"model_list": [MODEL], "server": {"host": "0.0.0.0"}}, "not a loopback address"),
        ({"model_list": [MODEL], "surprise": 1}, "surprise: Extra inputs are not permitted"),
        ({"model_list": []}, "model_list"),
        ([1, 2], "top level must be a mapping"),
    ],
)
def test_errors_name_the_key(raw, needle):
    env = {"KEY": "k"}
    with pytest.raises(ConfigError) as err:
        parse_config(raw, env=env)
    assert needle in str(err.value)


def test_public_bind_is_allowed_with_client_keys():
    raw = {"model_list": [MODEL], "server": {"host": "0.0.0.0", "api_keys": ["os.environ/CK"]}}
    config = parse_config(raw, env={"KEY": "k", "CK": "client"})
    assert config.server.api_keys[0].get_secret_value() == "client"


def test_yaml_errors_are_reported(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model_list: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")


def test_a_live_fit_puts_the_test_share_into_calibration():
    config = parse_config({"model_list": [MODEL], "tasks": [TASK]}, env={"KEY": "k"})
    options = fit_options(config.tasks[0])
    assert options.test_size == 0.0
    assert options.calibration_size == pytest.approx(0.35)
