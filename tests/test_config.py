"""Loading, validating and overriding the YAML config."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import pytest

from router.errors import ConfigError
from service.gateway import Gateway
from service.settings import DEFAULT_CONFIG_PATH, load_settings

MINIMAL = """
targets:
  edge: {type: fake, reply: hello}
  cloud: {type: openai, base_url: "http://127.0.0.1:9/v1", model: gpt-4o-mini, api_key_env: TEST_KEY_ENV}
policies:
  - {type: explicit}
  - {type: privacy, on_personal_data: edge}
  - {type: default, target: edge}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_minimal_config_loads(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, MINIMAL))

    assert settings.targets["cloud"].type == "openai"
    assert settings.server.port == 8080
    assert [p["type"] for p in settings.policies] == ["explicit", "privacy", "default"]


def test_env_overrides_file_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYBRID_ROUTER_SERVER__PORT", "9123")
    monkeypatch.setenv("HYBRID_ROUTER_LIMITS__MAX_MESSAGES", "7")
    monkeypatch.setenv("HYBRID_ROUTER_LOGGING__LOG_PROMPTS", "true")

    settings = load_settings(write(tmp_path, MINIMAL))

    assert settings.server.port == 9123
    assert settings.limits.max_messages == 7
    assert settings.logging.log_prompts is True
    assert settings.limits.max_body_bytes == 4 * 1024 * 1024


def test_config_env_var_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYBRID_ROUTER_CONFIG", str(write(tmp_path, MINIMAL)))
    assert load_settings().targets["edge"].type == "fake"


def test_embedded_default_is_the_readme_shape() -> None:
    settings = load_settings(DEFAULT_CONFIG_PATH)

    assert settings.targets["edge"].type == "onnx"
    assert settings.targets["cloud"].type == "openai"
    assert [p["type"] for p in settings.policies] == [
        "explicit",
        "privacy",
        "context_window",
        "capability",
        "difficulty",
        "default",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("targets: {}\n", "targets: Value error, at least one target must be configured"),
        ("targets: {e: {type: gpu}}\n", "targets.e: Input tag 'gpu' found using 'type' does not match any of the expected tags"),
        ("targets: {e: {type: fake, colour: red}}\n", "targets.e.colour: Extra inputs are not permitted"),
        ("targets: {c: {type: openai, model: m, base_url: 'ftp://x'}}\n", "targets.c.base_url: URL scheme should be"),
        ("targets: {c: {type: openai, model: m, base_url: 'http://x', timeouts: {connect_s: 0}}}\n",
         "targets.c.timeouts.connect_s: Input should be greater than 0"),
        ("targets: {e: {type: fake}}\nserver: {port: 99999}\n", "server.port: Input should be less than or equal to 65535"),
        ("targets: {e: {type: fake}}\nlimits: {max_mesages: 3}\n", "limits.max_mesages: Extra inputs are not permitted"),
        ("targets: {auto: {type: fake}}\n", "must be letters, digits"),
        ("targets: {e: {type: fake}}\npolicies: [{on_personal_data: edge}]\n", "policies[0] needs a 'type'"),
        ("targets: [oops\n", "not valid YAML"),
        ("targets: {c: {type: openai, model: m, base_url: 'http://x', headers: {Authorization: 'Bearer sk'}}}\n",
         "must not be set in config"),
    ],
)  # fmt: skip
def test_bad_config_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, text))
    assert message in caught.value.message


def test_validation_errors_never_echo_values(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, "targets: {e: {type: fake, delay_s: 'sk-verysecretvalue'}}\n"))
    assert "sk-verysecretvalue" not in caught.value.message


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml")


def test_unknown_policy_lists_the_valid_ones(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, "targets: {e: {type: fake}}\npolicies: [{type: privcy}]\n"))
    with pytest.raises(ConfigError) as caught:
        Gateway.from_settings(settings)
    assert caught.value.message == (
        "policies[0].type: unknown policy type 'privcy'; valid types: capability, cascade, context_window, default, "
        "difficulty, distilled, explicit, latency, privacy, semantic, sticky, weighted, or an import path 'module:Class'"
    )


@pytest.mark.parametrize(
    ("policies", "message"),
    [
        ("[{type: privacy, on_personal_data: cloud}]", "policies[0] (privacy): policies[0].on_personal_data: Input should be 'edge', 'redact' or 'reject'"),
        ("[{type: default, target: gpu}]", "policies[0].target: unknown target 'gpu'; configured targets: e"),
        ("[{type: default}]", "policies[0] (default): policies[0].target: Field required"),
        ("[{type: explicit, extra: 1}]", "policies[0].extra: Extra inputs are not permitted"),
        ("[{type: 'no.such.module:Policy'}]", "policies[0].type: cannot import policy 'no.such.module:Policy'"),
    ],
)  # fmt: skip
def test_bad_policy_options_fail_at_start_up(tmp_path: Path, policies: str, message: str) -> None:
    settings = load_settings(write(tmp_path, f"targets: {{e: {{type: fake}}}}\npolicies: {policies}\n"))
    with pytest.raises(ConfigError) as caught:
        Gateway.from_settings(settings)
    assert message in caught.value.message


def test_custom_policy_loads_by_import_path(tmp_path: Path) -> None:
    text = "targets: {e: {type: fake}, f: {type: fake}}\npolicies: [{type: 'tests.policies.custom:PreferTarget', target: f}]\n"
    gateway = Gateway.from_settings(load_settings(write(tmp_path, text)))

    from router.chat import ChatRequest

    request = ChatRequest.model_validate({"messages": [{"role": "user", "content": "x"}]})
    decision = asyncio.run(gateway.router.decide(request))
    assert (decision.target, decision.reason) == ("f", "custom policy likes f")


def test_custom_policy_loads_from_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dist = tmp_path / "site" / "night_policies-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: night-policies\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[hybrid_router.policies]\nnight = tests.policies.custom:PreferTarget\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))

    text = "targets: {e: {type: fake}, f: {type: fake}}\npolicies: [{type: night, target: f}]\n"
    gateway = Gateway.from_settings(load_settings(write(tmp_path, text)))

    assert [type(p).__name__ for p in gateway.router.policies] == ["PreferTarget"]
    with pytest.raises(
        ConfigError,
        match="valid types: capability, cascade, context_window, default, difficulty, distilled, explicit, latency, night",
    ):
        Gateway.from_settings(load_settings(write(tmp_path, "targets: {e: {type: fake}}\npolicies: [{type: nite}]\n")))


def test_config_version_is_explicit_or_a_content_hash(tmp_path: Path) -> None:
    a = load_settings(write(tmp_path, MINIMAL))
    b = load_settings(write(tmp_path, MINIMAL.replace("hello", "hullo")))
    c = load_settings(write(tmp_path, "version: '2026-11-27.1'\n" + MINIMAL))

    assert len(a.config_version) == 12
    assert a.config_version != b.config_version
    assert c.config_version == "2026-11-27.1"


def test_example_config_documents_a_valid_config() -> None:
    example = Path(__file__).resolve().parents[1] / "deploy" / "config.example.yaml"
    settings = load_settings(example)
    assert set(settings.targets) >= {"edge", "cloud"}
