"""Typed configuration of targets and policies.

Each target ``type`` has its own model, selected by the ``type`` key, so a
typo in any option fails start-up with the option's full path, e.g.
``targets.cloud.timeouts.connect_s: Input should be greater than 0``.

>>> cfg = RouterConfig.model_validate({
...     "targets": {"edge": {"type": "fake"}},
...     "policies": [{"type": "default", "target": "edge"}],
... })
>>> cfg.targets["edge"].type
'fake'
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, field_validator, model_validator

from edge_models.catalog import is_model_path
from edge_models.distill.registry import default_registry_dir

__all__ = [
    "TARGET_TYPES",
    "check_fallbacks",
    "AnthropicTargetConfig",
    "AzureOpenAITargetConfig",
    "BedrockTargetConfig",
    "Capability",
    "CircuitConfig",
    "ClassifierConfig",
    "GeminiTargetConfig",
    "SemanticRouteConfig",
    "VertexTargetConfig",
    "FakeTargetConfig",
    "OnnxTargetConfig",
    "OpenAITargetConfig",
    "Price",
    "RetryConfig",
    "RouterConfig",
    "TargetConfig",
    "Timeouts",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Price(_Strict):
    """USD per million tokens."""

    input: Annotated[float, Field(ge=0)] = 0.0
    output: Annotated[float, Field(ge=0)] = 0.0


class Capability(_Strict):
    """Overrides of what a target can do; unset fields keep the type's default."""

    tools: bool | None = None
    json_schema: bool | None = None
    images: bool | None = None


class Timeouts(_Strict):
    """Seconds. ``first_byte_s`` bounds the wait for the first answer byte or
    stream event, ``idle_s`` the gap between stream events, ``total_s`` the
    whole call."""

    connect_s: Annotated[float, Field(gt=0)] = 5.0
    first_byte_s: Annotated[float, Field(gt=0)] = 60.0
    idle_s: Annotated[float, Field(gt=0)] = 60.0
    total_s: Annotated[float, Field(gt=0)] = 600.0


class RetryConfig(_Strict):
    """How a target's failed calls are tried again (README, "Resilience").

    Only retryable failures (:attr:`router.errors.HybridRouterError.retryable`:
    connect errors, 429, 5xx, timeouts before the first byte) are retried, and
    only before the first byte of an answer. The wait before retry *n* is drawn
    uniformly from ``[0, min(max_delay_s, base_delay_s * 2**(n-1))]``, and is at
    least the upstream's ``Retry-After``; a ``Retry-After`` above ``max_delay_s``
    ends the retries at once (the request falls back, or the client gets the
    error with that ``Retry-After``). Retries are also capped by a budget: over
    the last ``budget_window_s``, at most ``budget_floor`` plus ``budget_ratio``
    of the calls made, so a failing upstream never sees a retry storm.

    >>> RetryConfig(max_attempts=1).max_attempts  # no retries
    1
    """

    max_attempts: Annotated[int, Field(ge=1, le=10)] = Field(
        default=3, description="Calls per request to this target, the first included; 1: no retries."
    )
    base_delay_s: Annotated[float, Field(ge=0)] = 0.2
    max_delay_s: Annotated[float, Field(ge=0)] = 2.0
    budget_ratio: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.2, description="Retries allowed per call made, over the window."
    )
    budget_window_s: Annotated[float, Field(gt=0)] = 10.0
    budget_floor: Annotated[int, Field(ge=0)] = Field(
        default=3, description="Retries always allowed per window, so that a quiet target can still retry."
    )


class CircuitConfig(_Strict):
    """When a target's circuit breaker opens, and how it closes again (README, "Resilience").

    It opens after ``failures`` consecutive failed calls (retries included), or
    when at least ``error_rate`` of the calls in the last ``window_s`` failed
    (once there were at least ``min_requests``). Open, the target reports not ready, so the router
    skips it and says why; after ``open_s`` it lets ``half_open_probes`` calls
    through, and closes when they all succeed (one failure opens it again).
    A failure is the target's fault: a 5xx, 429, timeout, broken connection or
    rejected key; a bad request, a content filter or a full local queue is not.

    >>> CircuitConfig().failures
    10
    """

    # Retries count as calls, and at 30% background failure and 100 calls/s, 5 in a row happen every few
    # seconds: 10 keeps a flaky but useful cloud in use, and still takes a dead one out within ~4 requests.
    failures: Annotated[int, Field(ge=1)] = 10
    error_rate: Annotated[float, Field(gt=0, le=1)] = 0.5
    window_s: Annotated[float, Field(gt=0)] = 30.0
    min_requests: Annotated[int, Field(ge=1)] = 20
    open_s: Annotated[float, Field(gt=0)] = 15.0
    half_open_probes: Annotated[int, Field(ge=1)] = 1


def _no_retries() -> RetryConfig:
    return RetryConfig(max_attempts=1)


class _TargetCommon(_Strict):
    aliases: list[str] = Field(default_factory=list, description="Other `model` names that pin this target.")
    price_per_mtok: Price = Field(default_factory=Price)
    quality: Annotated[float, Field(ge=0, le=1)] = 0.5
    latency_ms: Annotated[float, Field(gt=0)] = 1000.0
    supports: Capability = Field(default_factory=Capability)
    context_window: Annotated[int, Field(ge=1)] | None = None
    fallback: list[str] = Field(
        default_factory=list,
        description="Targets tried in order when this one fails before answering (README, 'Resilience'). "
        "Only this list is tried, not the fallbacks' own lists; targets a policy forbids for the request are skipped.",
    )
    # A local target has nothing to retry (a full queue does not empty in a back-off) and no circuit.
    retries: RetryConfig = Field(default_factory=_no_retries)
    circuit: CircuitConfig | None = None


class _CloudCommon(_TargetCommon):
    """What every HTTP (cloud) target has."""

    timeouts: Timeouts = Field(default_factory=Timeouts)
    retries: RetryConfig = Field(default_factory=RetryConfig)
    circuit: CircuitConfig | None = Field(default_factory=CircuitConfig, description="null: no circuit breaker.")
    max_connections: Annotated[int, Field(ge=1)] = 100
    quality: Annotated[float, Field(ge=0, le=1)] = 0.9
    latency_ms: Annotated[float, Field(gt=0)] = 800.0


class OpenAITargetConfig(_CloudCommon):
    """Any OpenAI-compatible endpoint: OpenAI itself, vLLM, Ollama, LM Studio."""

    type: Literal["openai"]
    base_url: AnyHttpUrl
    model: str
    api_key_env: str | None = Field(
        default=None, description="Env var holding the API key; unset for keyless local servers."
    )
    headers: dict[str, str] = Field(default_factory=dict, description="Static extra headers (not secrets).")
    forward_unknown_fields: bool = Field(
        default=False,
        description="Send request fields OpenAI does not document (vLLM's top_k, ...). OpenAI itself rejects them.",
    )

    @field_validator("headers")
    @classmethod
    def _no_auth_headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if name.lower() in ("authorization", "api-key", "x-api-key"):
                raise ValueError(f"{name} must not be set in config; name the env var in api_key_env")
        return value


class AzureOpenAITargetConfig(_CloudCommon):
    """Azure OpenAI: ``{endpoint}/openai/deployments/{deployment}/chat/completions?api-version=...``.

    Auth is an ``api-key`` header from ``api_key_env``, or a Microsoft Entra ID
    bearer token from ``azure-identity``'s default credential chain.
    """

    type: Literal["azure_openai"]
    endpoint: AnyHttpUrl = Field(description="https://{resource}.openai.azure.com")
    deployment: str
    api_version: str = "2024-10-21"
    auth: Literal["api_key", "entra_id"] = "api_key"
    api_key_env: str = "AZURE_OPENAI_API_KEY"
    entra_scope: str = "https://cognitiveservices.azure.com/.default"
    model: str | None = Field(default=None, description="Reported model name; the deployment's name when unset.")


class BedrockTargetConfig(_CloudCommon):
    """AWS Bedrock Runtime Converse / ConverseStream, signed with SigV4 by botocore.

    Credentials come from botocore's standard chain (env vars, shared
    config/credentials files and ``profile``, SSO, container and instance roles).
    """

    type: Literal["bedrock"]
    region: str
    model_id: str = Field(description="e.g. anthropic.claude-3-5-sonnet-20240620-v1:0 or meta.llama3-70b-instruct-v1:0")
    profile: str | None = None
    endpoint_url: AnyHttpUrl | None = Field(
        default=None, description="Override https://bedrock-runtime.{region}.amazonaws.com (VPC endpoints)."
    )


class GeminiTargetConfig(_CloudCommon):
    """Google Gemini API: ``{base_url}/v1beta/models/{model}:generateContent``."""

    type: Literal["gemini"]
    model: str
    api_key_env: str = "GEMINI_API_KEY"
    base_url: AnyHttpUrl = AnyHttpUrl("https://generativelanguage.googleapis.com")
    api_version: str = "v1beta"


class VertexTargetConfig(_CloudCommon):
    """Google Vertex AI ``generateContent`` on a publisher model, with OAuth from google-auth.

    Credentials: ``credentials_file`` (a service-account JSON) when set, else
    application default credentials.
    """

    type: Literal["vertex"]
    project: str
    region: str
    model: str
    credentials_file: str | None = None
    base_url: AnyHttpUrl | None = Field(default=None, description="Override https://{region}-aiplatform.googleapis.com")


class AnthropicTargetConfig(_CloudCommon):
    """Anthropic Messages API: ``{base_url}/v1/messages``."""

    type: Literal["anthropic"]
    model: str
    api_key_env: str = "ANTHROPIC_API_KEY"
    base_url: AnyHttpUrl = AnyHttpUrl("https://api.anthropic.com")
    anthropic_version: str = "2023-06-01"
    default_max_tokens: Annotated[int, Field(ge=1)] = Field(
        default=1024, description="Anthropic requires max_tokens; used when the request sets none."
    )


class OnnxTargetConfig(_TargetCommon):
    """The local model, run with ONNX Runtime GenAI."""

    type: Literal["onnx"]
    model: str = Field(
        default="smollm2-135m-instruct",
        description="A built model name (see `hybrid-router edge build`) or a path to an ONNX GenAI model folder.",
    )
    precision: Literal["int4", "int8", "fp32"] | None = Field(
        default=None, description="Which build of a named model to load; the default precision when unset."
    )
    models_dir: str | None = Field(
        default=None,
        description="Where built models live; default $HYBRID_ROUTER_MODELS_DIR or ~/.cache/hybrid-router/models.",
    )
    batching: bool = Field(
        default=True,
        description="Continuous batching (edge_models/batching.py): generations join and leave one batch between "
        "decode steps, so concurrent requests share each step. False: one generation per worker thread.",
    )
    max_concurrency: Annotated[int, Field(ge=1)] | None = Field(
        default=None,
        description="Generations at once: with batching, the rows decoded together (default 8); without, worker "
        "threads (default one per two CPU cores).",
    )
    prefix_cache_tokens: Annotated[int, Field(ge=0)] = Field(
        default=2048,
        description="With batching: tokens of recent prompts and answers whose key/value cache is kept (46 KB "
        "each for SmolLM2-135M), so a prompt starting the same way (a system prompt, earlier turns) reuses it. "
        "0 turns prefix reuse off.",
    )
    max_queue: Annotated[int, Field(ge=0)] = Field(default=8, description="Requests waiting for a slot before busy.")
    threads: Annotated[int, Field(ge=1)] | None = Field(
        default=None,
        description="Intra-op threads: with batching, of the one batch (default all cores); without, per generation.",
    )
    default_max_tokens: Annotated[int, Field(ge=1)] = Field(
        default=512, description="When the request sets no max_tokens."
    )
    # Sampling for a request that sets none. Unset: the model's own recommended generation config
    # (genai_config.json "search"; SmolLM2: temperature 0.2, top_p 0.9, top_k 50), not OpenAI's 1.0.
    temperature: Annotated[float, Field(ge=0, le=2)] | None = Field(
        default=None, description="When the request sets none (default: the model's generation config). 0 is greedy."
    )
    top_p: Annotated[float, Field(gt=0, le=1)] | None = Field(
        default=None, description="When the request sets none (default: the model's generation config)."
    )
    top_k: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="When the request sets none (default: the model's generation config); 0 is off."
    )
    repetition_penalty: Annotated[float, Field(gt=0)] | None = Field(
        default=None,
        description="Above 1 discourages small models from looping (default: the model's generation config, else 1).",
    )
    distilled: bool = Field(
        default=False,
        description="Serve the promoted distilled version of this model from its registry, swapping live when it "
        "changes (`hybrid-router distill promote|rollback`); the base model when none is promoted.",
    )
    registry: str | None = Field(
        default=None,
        description="With distilled: the folder of distilled versions (registry.json, v1/, v2/, ...); "
        "default <models_dir>/distilled/<model>. Required when `model` is a path.",
    )
    registry_poll_s: Annotated[float, Field(gt=0)] = Field(
        default=5.0, description="With distilled: how often to check the registry for a promote or rollback."
    )
    quality: Annotated[float, Field(ge=0, le=1)] = 0.3
    latency_ms: Annotated[float, Field(gt=0)] = 100.0

    @model_validator(mode="after")
    def _registry_known(self) -> OnnxTargetConfig:
        if self.distilled and self.registry is None and is_model_path(self.model):
            raise ValueError(
                "distilled: true with a model path needs `registry:` (the folder holding registry.json and the "
                "versions); only a built model name has a default registry"
            )
        return self

    def registry_dir(self) -> Path | None:
        """With ``distilled``: the folder of distilled versions (``registry``, else the model's default); else None."""
        if not self.distilled:
            return None
        if self.registry:
            return Path(self.registry).expanduser()
        return default_registry_dir(self.model, Path(self.models_dir).expanduser() if self.models_dir else None)


class FakeTargetConfig(_TargetCommon):
    """A scripted target for demos and tests: answers ``reply`` after ``delay_s``."""

    type: Literal["fake"]
    model: str = "scripted"
    reply: str = "Hello from the scripted backend."
    delay_s: Annotated[float, Field(ge=0)] = 0.0
    local: bool = True


_TARGET_MODELS = (
    OpenAITargetConfig,
    AzureOpenAITargetConfig,
    BedrockTargetConfig,
    GeminiTargetConfig,
    VertexTargetConfig,
    AnthropicTargetConfig,
    OnnxTargetConfig,
    FakeTargetConfig,
)
TargetConfig = Annotated[
    OpenAITargetConfig
    | AzureOpenAITargetConfig
    | BedrockTargetConfig
    | GeminiTargetConfig
    | VertexTargetConfig
    | AnthropicTargetConfig
    | OnnxTargetConfig
    | FakeTargetConfig,
    Field(discriminator="type"),
]
TARGET_TYPES: frozenset[str] = frozenset(m.model_fields["type"].annotation.__args__[0] for m in _TARGET_MODELS)  # type: ignore[union-attr]
"""Every valid target ``type``."""


class SemanticRouteConfig(_Strict):
    """A named kind of request, defined by example utterances.

    A request matches the route whose closest example is most similar to it,
    if that similarity (cosine, -1..1) reaches ``threshold``; else "no match".
    """

    name: Annotated[str, Field(min_length=1)]
    examples: Annotated[list[str], Field(min_length=1)]
    threshold: Annotated[float, Field(ge=-1, le=1)] | None = None


class ClassifierConfig(_Strict):
    """How requests are classified before the policies run."""

    deadline_ms: Annotated[float, Field(gt=0)] = Field(
        default=50.0,
        description="Budget for the model-based parts; past it, personal data is assumed and difficulty is rule-based.",
    )
    encoder: Literal["static", "minilm"] = Field(
        default="static",
        description="static: distilled MiniLM token table (microseconds); minilm: the full ONNX encoder (ms).",
    )
    encoder_dir: str | None = Field(default=None, description="Default: <models_dir>/all-minilm-l6-v2.")
    encoder_max_tokens: Annotated[int, Field(ge=8, le=512)] = Field(
        default=128, description="Tokens the full MiniLM encoder reads (the static one reads the whole clipped text)."
    )
    difficulty_head: str | None = Field(
        default="default",
        description="'default' (shipped, trained for the default edge model), a head .onnx path, or null for rules.",
    )
    route_threshold: Annotated[float, Field(ge=-1, le=1)] = Field(
        default=0.5, description="Similarity a semantic route needs when it sets no threshold of its own."
    )
    routes: list[SemanticRouteConfig] = Field(default_factory=list)
    detect_language: bool | None = Field(
        default=None,
        description="Identify the prompt's language (py3langid, ~0.1 ms). Default: only when a policy requires it.",
    )
    phone_regions: list[str] = Field(
        default_factory=lambda: ["US", "GB", "DE", "FR", "IN", "CN", "JP", "BR", "ES", "IT", "CA", "AU"],
        description="Regions whose national phone formats are recognised without a +country prefix.",
    )

    @field_validator("routes")
    @classmethod
    def _unique_routes(cls, value: list[SemanticRouteConfig]) -> list[SemanticRouteConfig]:
        names = [route.name for route in value]
        if len(names) != len(set(names)):
            raise ValueError(f"route names must be unique: {names}")
        return value


class RouterConfig(BaseModel):
    """Targets and the ordered policy chain."""

    model_config = ConfigDict(extra="forbid")

    targets: dict[str, TargetConfig]
    policies: list[dict[str, Any]] = Field(
        default_factory=lambda: [{"type": "explicit"}],
        description="Evaluated in order; each item has a `type` and that policy's options.",
    )
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig)

    @field_validator("targets")
    @classmethod
    def _some_targets(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not value:
            raise ValueError("at least one target must be configured")
        for name in value:
            if not name or name == "auto" or not name.replace("-", "").replace("_", "").isalnum():
                raise ValueError(f"target name {name!r} must be letters, digits, '-' or '_' and not 'auto'")
        return value

    @field_validator("policies")
    @classmethod
    def _policies_have_type(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for index, spec in enumerate(value):
            if not isinstance(spec.get("type"), str):
                raise ValueError(f"policies[{index}] needs a 'type'")
        return value

    @model_validator(mode="after")
    def _fallbacks_known(self) -> RouterConfig:
        check_fallbacks({name: target.fallback for name, target in self.targets.items()})
        return self

    @model_validator(mode="after")
    def _aliases_unique(self) -> RouterConfig:
        seen: dict[str, str] = {}
        for name, target in self.targets.items():
            for alias in target.aliases:
                if alias in self.targets or alias in seen or alias == "auto":
                    raise ValueError(f"targets.{name}.aliases: {alias!r} is already a target or alias")
                seen[alias] = name
        return self


def check_fallbacks(fallbacks: dict[str, list[str]]) -> None:
    """Raise ValueError naming the key when a target's ``fallback`` list names an unknown target, itself, or
    a target twice. A chain is exactly the list (fallbacks' own lists are not followed), so no cycle can form:
    ``edge: [cloud]`` with ``cloud: [edge]`` is fine.

    >>> check_fallbacks({"edge": ["cloud"], "cloud": ["edge"]})
    >>> check_fallbacks({"cloud": ["edg"]})
    Traceback (most recent call last):
    ValueError: targets.cloud.fallback: 'edg' is not a target; the targets are: cloud
    """
    for name, chain in fallbacks.items():
        where = f"targets.{name}.fallback"
        for other in chain:
            if other == name:
                raise ValueError(f"{where}: a target cannot fall back to itself")
            if other not in fallbacks:
                raise ValueError(f"{where}: {other!r} is not a target; the targets are: {', '.join(fallbacks)}")
        if len(set(chain)) != len(chain):
            raise ValueError(f"{where}: names a target twice")
