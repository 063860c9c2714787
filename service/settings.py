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
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, YamlConfigSettingsSource

from router.config import TARGET_TYPES, ClassifierConfig, RouterConfig, TargetConfig
from router.errors import ConfigError
from service.capture import CaptureSettings

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG_PATH",
    "AuthSettings",
    "ClientKeySettings",
    "ConfigSource",
    "DistillSettings",
    "LimitSettings",
    "LoggingSettings",
    "ServerSettings",
    "Settings",
    "SpendLimits",
    "SpendSettings",
    "StateSettings",
    "TenantSettings",
    "keep_restart_only",
    "load_settings",
]

CONFIG_ENV = "HYBRID_ROUTER_CONFIG"
DEFAULT_CONFIG_PATH = Path(__file__).with_name("default_config.yaml")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerSettings(_Section):
    """Where the gateway listens and how it protects itself from slow or greedy clients.

    Every timeout and cap here exists so that no client, however slow, can hold
    the gateway: a connection must finish its request head within
    ``header_timeout_s`` and its body within ``body_timeout_s``; over
    ``max_connections`` or ``max_concurrent_requests`` callers get a 503 with
    ``Retry-After``, never a hang.

    >>> ServerSettings(header_timeout_s=5).body_timeout_s
    30.0
    """

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    header_timeout_s: Annotated[float, Field(gt=0, le=300)] = Field(
        default=10.0,
        description="Seconds a connection has, from opening or from its previous response, to send a full request "
        "head; then it is closed (slowloris).",
    )
    body_timeout_s: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=30.0, description="Seconds a request has to send its whole body once its head is in; then 408."
    )
    max_header_bytes: Annotated[int, Field(ge=1024, le=1024 * 1024)] = Field(
        default=64 * 1024, description="Largest request line plus headers; 431 above."
    )
    keep_alive_s: Annotated[int, Field(ge=1, le=300)] = Field(
        default=5, description="Seconds an idle keep-alive connection stays open between requests."
    )
    max_connections: Annotated[int, Field(ge=1)] = Field(
        default=512,
        description="Open connections at once. At the cap, the connection idle longest before its request head is "
        "closed to make room; when none is, the new one gets a 503.",
    )
    max_concurrent_requests: Annotated[int, Field(ge=1)] = Field(
        default=256,
        description="Requests being served at once (probes excepted); above it, 503 with Retry-After. Stalled "
        "connections that have not sent a full head do not count.",
    )
    metrics_auth: bool = Field(default=False, description="Require a client key (Authorization: Bearer) for /metrics.")
    metrics_port: Annotated[int, Field(ge=1, le=65535)] | None = Field(
        default=None,
        description="Serve /metrics only on this port, bound to 127.0.0.1, instead of on the main port.",
    )
    reload_poll_s: Annotated[float, Field(ge=0, le=3600)] = Field(
        default=2.0,
        description="Seconds between checks of the config file for a change, which is then validated and swapped "
        "in (README, 'Hot reload'); 0: only SIGHUP reloads.",
    )

    @model_validator(mode="after")
    def _metrics_port_is_its_own(self) -> ServerSettings:
        if self.metrics_port is not None and self.metrics_port == self.port:
            raise ValueError("metrics_port must differ from port")
        return self


def _check_hash(item: str) -> str:
    algo, _, digest = item.partition(":")
    if algo != "sha256" or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError("each hash must be 'sha256:' followed by 64 lowercase hex digits")
    return item


class SpendLimits(_Section):
    """The limits of one tenant or one client key; an unset one is no limit of that kind.

    Rates are over a sliding minute; budgets over the calendar day and month in UTC.
    """

    requests_per_minute: Annotated[int, Field(ge=1)] | None = None
    tokens_per_minute: Annotated[int, Field(ge=1)] | None = None
    usd_per_day: Annotated[float, Field(ge=0)] | None = None
    usd_per_month: Annotated[float, Field(ge=0)] | None = None


class ClientKeySettings(_Section):
    """A client key given in config: its hash, tenant, own limits and the targets it may use (all when unset)."""

    hash: str
    tenant: str = Field(default="default", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    label: str = Field(default="", max_length=200)
    limits: SpendLimits = Field(default_factory=SpendLimits)
    allowed_targets: list[str] | None = None

    @field_validator("hash")
    @classmethod
    def _hash_well_formed(cls, value: str) -> str:
        return _check_hash(value)


class AuthSettings(_Section):
    """Client keys. With none configured, the gateway serves anyone who can reach it,
    so it then starts only on a loopback address (a sidecar), or with
    ``allow_unauthenticated: true``.

    Keys are stored as ``sha256:<hex>`` hashes (``hybrid-router auth hash KEY``
    prints one), or given in plain text through the env var named by
    ``api_keys_env`` (comma-separated), which is hashed at start-up. Keys in
    ``api_key_hashes`` and the env var belong to the tenant ``default``;
    ``keys`` gives each its tenant, limits and allowed targets, and
    ``hybrid-router keys create`` adds keys to the state store at run time.
    """

    api_key_hashes: list[str] = Field(default_factory=list)
    keys: list[ClientKeySettings] = Field(default_factory=list)
    api_keys_env: str = "HYBRID_ROUTER_API_KEYS"
    allow_unauthenticated: bool = Field(
        default=False,
        description="Serve without client keys on a non-loopback address. Only for a gateway behind something "
        "that authenticates callers itself; without it such a gateway refuses to start.",
    )

    @field_validator("api_key_hashes")
    @classmethod
    def _hashes_well_formed(cls, value: list[str]) -> list[str]:
        return [_check_hash(item) for item in value]

    @model_validator(mode="after")
    def _each_key_once(self) -> AuthSettings:
        hashes = [key.hash for key in self.keys]
        if len(set(hashes)) != len(hashes) or set(hashes) & set(self.api_key_hashes):
            raise ValueError("a key hash is listed twice (auth.keys, auth.api_key_hashes)")
        return self


class TenantSettings(_Section):
    """One tenant: its limits, and what happens to its requests past them.

    ``edge``: the request is served by a local target (which costs nothing), if
    one can serve it; ``reject``: 429 naming the limit, with ``Retry-After``.
    """

    limits: SpendLimits = Field(default_factory=SpendLimits)
    on_budget_exhausted: Literal["reject", "edge"] = "reject"
    on_rate_limited: Literal["reject", "edge"] = "reject"


class StateSettings(_Section):
    """Where budgets, rate windows and run-time client keys live, and what to do when that store is down.

    ``url``: ``memory://`` (this process only: the default, fine for one
    worker), ``sqlite:///<path>`` (every worker of one machine; four slashes
    for an absolute path) or ``redis://host:port/db`` (many replicas).
    ``on_outage``: ``edge`` serves requests on local targets only until the
    store is back (nothing is charged or counted meanwhile); ``reject`` answers 503.
    """

    url: str = "memory://"
    on_outage: Literal["edge", "reject"] = "edge"
    # A hold outlives the longest request (limits.request_timeout_s) and then frees itself (a crashed worker's).
    hold_ttl_s: Annotated[float, Field(gt=0)] = 900.0
    # Seconds a looked-up run-time key is trusted before the store is asked again (revocation takes this long).
    key_cache_s: Annotated[float, Field(ge=0)] = 10.0
    # Redis only: a busy client's requests are admitted from leases taken ahead (router/state/leases.py),
    # each this share of every rate and budget limit, living lease_s; 0 asks Redis for every request.
    lease_fraction: Annotated[float, Field(ge=0, le=0.5)] = 0.05
    lease_s: Annotated[float, Field(gt=0, le=10)] = 1.0

    @field_validator("url")
    @classmethod
    def _known_store(cls, value: str) -> str:
        scheme, sep, rest = value.partition("://")
        if not sep or scheme not in ("memory", "sqlite", "redis", "rediss", "unix"):
            raise ValueError("use memory://, sqlite:///<path>, redis://<host>:<port>/<db>, rediss://… or unix://…")
        if scheme == "sqlite" and (not rest.startswith("/") or rest == "/"):
            raise ValueError("a SQLite URL is sqlite:///<relative path> or sqlite:////<absolute path>")
        return value


class SpendSettings(_Section):
    """How spend is estimated and reported."""

    default_max_tokens: Annotated[int, Field(ge=1)] = Field(
        default=4096,
        description="Output tokens a budget hold assumes for a request that sets no max_tokens (targets with a "
        "default_max_tokens use theirs). Holds are upper bounds, so a budget is never overshot.",
    )
    saved_against: str | None = Field(
        default=None,
        description="The target whose prices value edge tokens in cost_saved_usd_total; default: the priciest.",
    )


class LimitSettings(_Section):
    max_body_bytes: Annotated[int, Field(ge=1024)] = 4 * 1024 * 1024
    max_messages: Annotated[int, Field(ge=1)] = 512
    max_prompt_chars: Annotated[int, Field(ge=1)] = 400_000
    request_timeout_s: Annotated[float, Field(gt=0)] = 300.0
    max_tokens_ceiling: Annotated[int, Field(ge=1)] = Field(
        default=32768, description="The largest max_tokens / max_completion_tokens a request may ask for; 400 above."
    )


class AutoSettings(_Section):
    """``distill.auto``: when to train and promote without an operator (service/distill_auto.py)."""

    enabled: bool = Field(default=False, description="Run the loop on a schedule (train, judge, promote).")
    check_every_s: Annotated[float, Field(gt=0)] = Field(default=3600.0, description="How often to look.")
    min_new_rows: Annotated[int, Field(ge=1)] = Field(
        default=1000, description="Train once the store holds this many training rows more than the last cycle."
    )
    time_budget_s: Annotated[float, Field(gt=0)] = Field(default=1800.0, description="Training time per cycle.")
    promote: bool = Field(default=True, description="Promote a student that wins; false: train and judge only.")
    target: str | None = Field(default=None, description="The distilled edge target; default: the first one.")


class DistillSettings(_Section):
    """The distillation loop (docs/architecture.md, "Distillation"): ``capture`` keeps cloud answers as rows.

    >>> DistillSettings().capture.enabled
    False
    """

    capture: CaptureSettings = Field(default_factory=CaptureSettings)
    auto: AutoSettings = Field(default_factory=AutoSettings)


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
    distill: DistillSettings = Field(default_factory=DistillSettings)
    state: StateSettings = Field(default_factory=StateSettings)
    tenants: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")], TenantSettings] = Field(
        default_factory=dict
    )
    spend: SpendSettings = Field(default_factory=SpendSettings)

    @model_validator(mode="after")
    def _spend_names_targets(self) -> Settings:
        known = set(self.targets)
        for index, key in enumerate(self.auth.keys):
            unknown = sorted(set(key.allowed_targets or ()) - known)
            if unknown:
                raise ValueError(f"auth.keys.{index}.allowed_targets: unknown target(s) {', '.join(unknown)}")
        if self.spend.saved_against is not None and self.spend.saved_against not in known:
            raise ValueError(f"spend.saved_against: unknown target {self.spend.saved_against!r}")
        return self

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


@dataclass(frozen=True)
class ConfigSource:
    """Where the settings come from, so that a reload reads them exactly as start-up did.

    ``overrides`` are keyword arguments to :func:`load_settings`, e.g. ``serve``'s
    ``--host``/``--port`` as ``{"server": {"port": 9000}}``: stronger than the
    file and the env vars, on every reload too.

    >>> ConfigSource.resolve(None, environ={}).watched
    False
    """

    path: Path
    overrides: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def resolve(
        cls, path: str | os.PathLike[str] | None = None, *, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> ConfigSource:
        """``path``, else ``$HYBRID_ROUTER_CONFIG``, else the embedded default."""
        env = os.environ if environ is None else environ
        return cls(Path(path if path is not None else env.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH), overrides)

    @property
    def watched(self) -> bool:
        """The embedded default ships with the code: it has no changes to watch for."""
        return self.path != DEFAULT_CONFIG_PATH

    def load(self) -> Settings:
        return load_settings(self.path, **self.overrides)

    def fingerprint(self) -> str | None:
        """A hash of the file's bytes; None while it cannot be read (an editor or a ConfigMap replacing it).

        A config is a few KB: hashing it at every poll costs nothing, catches a
        rewrite within one mtime tick, and ignores a ``touch``.
        """
        try:
            return hashlib.sha256(self.path.read_bytes()).hexdigest()
        except OSError:
            return None


# What a running gateway can change. The rest of ``server`` is bound when it starts (sockets, the connection
# protocol's deadlines and caps, the request-cap middleware), logging is configured once by the CLI, and the
# state store (``state.url``) is opened once.
_LIVE_KEYS = {
    "server": frozenset({"metrics_auth", "reload_poll_s"}),
    "logging": frozenset({"log_prompts"}),
    # The store is opened once; what to do when it is down, and for how long holds and keys last, are live.
    "state": frozenset({"on_outage", "hold_ttl_s", "key_cache_s"}),
}


def keep_restart_only(running: Settings, loaded: Settings) -> tuple[Settings, list[str]]:
    """``loaded``, with every setting that needs a restart kept at ``running``'s value; and those that differed.

    The result says what is in effect, so checks such as the open-access one
    judge the address actually bound. Its ``config_version`` stays
    ``loaded``'s, the version of the file as written.

    >>> a = Settings(targets={"e": {"type": "fake"}}, limits={"max_messages": 8})
    >>> b = Settings(targets={"e": {"type": "fake"}}, server={"port": 9000}, limits={"max_messages": 9})
    >>> kept, differed = keep_restart_only(a, b)
    >>> kept.server.port, kept.limits.max_messages, differed
    (8080, 9, ['server.port'])
    """
    update: dict[str, Any] = {"version": loaded.config_version}
    differed = []
    for section, live in _LIVE_KEYS.items():
        old, new = getattr(running, section), getattr(loaded, section)
        keep = {
            key: getattr(old, key)
            for key in type(new).model_fields
            if key not in live and getattr(old, key) != getattr(new, key)
        }
        if keep:
            update[section] = new.model_copy(update=keep)
            differed += [f"{section}.{key}" for key in keep]
    return loaded.model_copy(update=update), differed
