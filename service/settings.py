"""Typed gateway settings: one YAML file, overridden by environment variables.

Sources, strongest first:

1. keyword arguments (tests);
2. environment variables ``HYBRID_ROUTER_<SECTION>__<KEY>``, e.g.
   ``HYBRID_ROUTER_SERVER__PORT=9000`` or ``HYBRID_ROUTER_LIMITS__MAX_MESSAGES=64``;
3. the YAML file from ``--config`` or ``HYBRID_ROUTER_CONFIG``, else the
   embedded default (``service/default_config.yaml``).

A bad value fails start-up with a :class:`~router.errors.ConfigError` naming
the key: ``targets.cloud.timeouts.connect_s: Input should be greater than 0``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, YamlConfigSettingsSource

from router.config import TARGET_TYPES, ClassifierConfig, RouterConfig, TargetConfig
from router.errors import ConfigError

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG_PATH",
    "AuthSettings",
    "LimitSettings",
    "LoggingSettings",
    "ServerSettings",
    "Settings",
    "load_settings",
]

CONFIG_ENV = "HYBRID_ROUTER_CONFIG"
DEFAULT_CONFIG_PATH = Path(__file__).with_name("default_config.yaml")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080


class AuthSettings(_Section):
    """Client keys. With none configured, the gateway is open (a sidecar on loopback).

    Keys are stored as ``sha256:<hex>`` hashes (``hybrid-router auth hash KEY``
    prints one), or given in plain text through the env var named by
    ``api_keys_env`` (comma-separated), which is hashed at start-up.
    """

    api_key_hashes: list[str] = Field(default_factory=list)
    api_keys_env: str = "HYBRID_ROUTER_API_KEYS"

    @field_validator("api_key_hashes")
    @classmethod
    def _hashes_well_formed(cls, value: list[str]) -> list[str]:
        for item in value:
            algo, _, digest = item.partition(":")
            if algo != "sha256" or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ValueError("each hash must be 'sha256:' followed by 64 lowercase hex digits")
        return value


class LimitSettings(_Section):
    max_body_bytes: Annotated[int, Field(ge=1024)] = 4 * 1024 * 1024
    max_messages: Annotated[int, Field(ge=1)] = 512
    max_prompt_chars: Annotated[int, Field(ge=1)] = 400_000
    request_timeout_s: Annotated[float, Field(gt=0)] = 300.0


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_prompts: bool = Field(
        default=False, description="Include prompt text in logs. Off by default: prompts hold personal data."
    )
    json_format: bool = Field(default=True, description="One JSON object per line; false for human-readable lines.")


class Settings(BaseSettings):
    """Everything the gateway reads at start-up.

    >>> s = Settings(targets={"edge": {"type": "fake"}}, policies=[{"type": "default", "target": "edge"}])
    >>> s.server.port, len(s.config_version)
    (8080, 12)
    """

    model_config = SettingsConfigDict(
        env_prefix="HYBRID_ROUTER_",
        env_nested_delimiter="__",
        extra="forbid",
        nested_model_default_partial_update=True,
    )

    version: str | None = Field(default=None, description="Shown as config_version; a content hash when unset.")
    server: ServerSettings = Field(default_factory=ServerSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    targets: dict[str, TargetConfig]
    policies: list[dict[str, Any]] = Field(default_factory=lambda: [{"type": "explicit"}])
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: tuple[PydanticBaseSettingsSource, ...] = (init_settings, env_settings)
        if settings_cls.model_config.get("yaml_file"):
            sources += (YamlConfigSettingsSource(settings_cls),)
        return sources

    def router_config(self) -> RouterConfig:
        return RouterConfig(targets=self.targets, policies=self.policies, classifier=self.classifier)

    @property
    def config_version(self) -> str:
        if self.version:
            return self.version
        canonical = self.model_dump_json(exclude={"version"})
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def load_settings(path: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Load settings from ``path``, ``$HYBRID_ROUTER_CONFIG`` or the embedded default."""
    chosen = path if path is not None else os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH
    file = Path(chosen)
    if not file.is_file():
        raise ConfigError(f"config file {file} does not exist")
    bound: type[Settings] = type("Settings", (Settings,), {"model_config": SettingsConfigDict(yaml_file=file)})
    try:
        settings = bound(**overrides)
        settings.router_config()
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML: {exc}") from exc
    except ValidationError as exc:
        raise ConfigError(f"{file}: {describe_validation_error(exc)}") from exc
    return settings


def describe_validation_error(exc: ValidationError) -> str:
    """One line per problem, each naming the key path, never echoing values."""
    problems = []
    for err in exc.errors(include_input=False, include_url=False):
        # Discriminated unions add the chosen tag (e.g. 'openai') to the path; it is noise here.
        loc = [str(part) for part in err["loc"] if part not in TARGET_TYPES]
        problems.append(f"{'.'.join(loc) or '(top level)'}: {err['msg']}")
    return "; ".join(problems)
