"""Validate the Kubernetes manifests offline: deploy/k8s/** and the Helm chart rendered in every mode.

    .venv/bin/python deploy/check_manifests.py        # a line per document, then any problems; exit 1 on one

No cluster and no network. What it checks:

1. The chart (deploy/helm/hybrid-router) renders with Helm's own engine for each of ``SCENARIOS``, and
   ``helm lint --strict`` passes for each; each of ``MUST_FAIL`` fails to render, saying why. The engine is
   helm-python-sdk: Helm's Go SDK (v4) built as a C library, so templates run as under ``helm template``.
2. Every document, written or rendered, validates against the Kubernetes API's JSON schemas for each of
   ``KUBE_VERSIONS`` (kubernetes-validate, strict: an unknown field fails). A custom resource has no
   schema there: the ServiceMonitor is checked structurally, and any other kind without a schema fails.
3. Each set of documents holds together: the ConfigMaps, Secrets and Deployments a document names are in
   the set (or named as managed elsewhere), every selector selects a Pod or Service of the set, named ports exist.
4. Each gateway container (named ``hybrid-router``) has startup and liveness probes on /healthz and a readiness
   probe on /readyz, CPU and memory requests and limits, a non-root, read-only, capability-free securityContext,
   /tmp and its HOME on emptyDirs, its config mounted from a ConfigMap, and a grace period covering its drain.
   Beside an app it listens on 127.0.0.1 and is probed from inside the container (the kubelet cannot reach a
   loopback listener); alone, on 0.0.0.0 with client keys from a Secret (or hashes in its config).
5. Its config file, with the container's env, passes ``hybrid-router config check``: the gateway's own settings
   model and start-up safety checks. Secret values stand in as placeholders.

Needs ``pip install helm-python-sdk==0.2.2 kubernetes-validate==1.37.0`` beside the project.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
CHART = DEPLOY / "helm" / "hybrid-router"
MANIFESTS = DEPLOY / "k8s"

INSTALL = "pip install helm-python-sdk==0.2.2 kubernetes-validate==1.37.0"
# The oldest Kubernetes the chart supports (Chart.yaml's kubeVersion) and the newest kubernetes-validate knows.
KUBE_VERSIONS = ("1.25", "1.37")
RELEASE, NAMESPACE = "demo", "default"

GATEWAY = "hybrid-router"  # the gateway container's name, in every manifest and in the chart
DRAIN_S = 30  # uvicorn's graceful shutdown in service/server.py
GATEWAY_USER = 10001  # the image's user (deploy/Dockerfile)
KEYS_ENV = "HYBRID_ROUTER_API_KEYS"

_KEYS = {"HYBRID_ROUTER_API_KEYS": "key-1,key-2", "OPENAI_API_KEY": "sk-placeholder"}
_HASH = "sha256:" + "0" * 64
# Values files for the chart, by name: each renders, lints and validates.
SCENARIOS: dict[str, dict[str, Any]] = {
    "standalone": {"secrets": {"values": _KEYS}},
    "standalone-full": {
        "secrets": {"values": _KEYS},
        "autoscaling": {"enabled": True},
        "serviceMonitor": {"enabled": True},
        "stateStore": {"url": "redis://redis:6379/0"},
        "rolloutOnConfigChange": True,
    },
    "standalone-existing-secret": {"secrets": {"existingSecret": "hybrid-router-keys"}},
    "standalone-keys-in-config": {"config": {"auth": {"api_key_hashes": [_HASH]}}},
    "sidecar": {"mode": "sidecar"},
    "sidecar-autoscaling": {
        "mode": "sidecar",
        "autoscaling": {"enabled": True},
        "stateStore": {"url": "sqlite:////var/lib/hybrid-router/state.db"},
    },
}
# Secrets a scenario expects to exist already (secrets.existingSecret).
EXTERNAL_SECRETS: dict[str, frozenset[str]] = {"standalone-existing-secret": frozenset({"hybrid-router-keys"})}
# Values that must not render, with what the error must say.
MUST_FAIL: dict[str, tuple[dict[str, Any], str]] = {
    "standalone without client keys": ({}, "refuses to start there without client keys"),
    "a ServiceMonitor beside an app": (
        {"mode": "sidecar", "serviceMonitor": {"enabled": True}},
        "serviceMonitor needs mode standalone",
    ),
    "an unknown mode": ({"mode": "daemonset", "secrets": {"values": _KEYS}}, "mode must be standalone or sidecar"),
}


class ToolMissing(RuntimeError):
    """helm-python-sdk or kubernetes-validate is not installed."""


def load_tools() -> tuple[ModuleType, ModuleType]:
    """(helm_python, kubernetes_validate), or :class:`ToolMissing` saying how to install them."""
    try:
        import helm_python
        import kubernetes_validate
    except ImportError as exc:
        raise ToolMissing(f"{exc.name} is not installed; deploy/check_manifests.py needs: {INSTALL}") from exc
    return helm_python, kubernetes_validate


@dataclass(frozen=True)
class Doc:
    """One Kubernetes object and where it came from."""

    source: str
    body: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.body.get("kind", ""))

    @property
    def name(self) -> str:
        return str((self.body.get("metadata") or {}).get("name", ""))

    def __str__(self) -> str:
        return f"{self.source} {self.kind}/{self.name}"


@dataclass(frozen=True)
class Bundle:
    """Documents applied together: one folder of deploy/k8s, or one rendering of the chart."""

    name: str
    docs: tuple[Doc, ...]
    external_secrets: frozenset[str] = frozenset()

    def of_kind(self, kind: str) -> list[Doc]:
        return [doc for doc in self.docs if doc.kind == kind]

    def named(self, kind: str, name: str) -> Doc | None:
        return next((doc for doc in self.of_kind(kind) if doc.name == name), None)

    def pods(self) -> Iterator[tuple[Doc, dict[str, Any], dict[str, Any]]]:
        """(workload, pod labels, pod spec) of every Pod and Pod template."""
        for doc in self.docs:
            if doc.kind == "Pod":
                yield doc, doc.body["metadata"].get("labels") or {}, doc.body["spec"]
            elif doc.kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
                template = doc.body["spec"]["template"]
                yield doc, (template.get("metadata") or {}).get("labels") or {}, template["spec"]


@dataclass
class Report:
    """What a run found: a line per document checked, and the problems."""

    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    bundles: list[Bundle] = field(default_factory=list)
    validated: int = 0
    custom: int = 0
    gateways: int = 0
    configs: dict[str, tuple[bool, str]] = field(default_factory=dict)  # config check (passed, output), by gateway
    linted: int = 0
    refused: int = 0

    def summary(self) -> str:
        documents = sum(len(bundle.docs) for bundle in self.bundles)
        return (
            f"{documents} documents in {len(self.bundles)} sets: {self.validated} valid against the Kubernetes "
            f"{' and '.join(KUBE_VERSIONS)} schemas (strict), {self.custom} custom resources checked structurally; "
            f"{self.gateways} gateway containers checked, {sum(ok for ok, _ in self.configs.values())} of their "
            f"configs passed `hybrid-router config check`; helm lint --strict passed for {self.linted} values sets, "
            f"{self.refused} bad values sets refused; {len(self.problems)} problems"
        )


# --- Loading -----------------------------------------------------------------------------------------------


def manifest_bundles() -> list[Bundle]:
    """Each folder of deploy/k8s/** holding manifests, as applied with ``kubectl apply -f FOLDER``."""
    bundles = []
    for folder in sorted({path.parent for path in MANIFESTS.rglob("*.y*ml")}):
        docs = []
        for path in sorted(folder.glob("*.y*ml")):
            docs += parse(path.read_text(), str(path.relative_to(REPO)))
        bundles.append(Bundle(folder.relative_to(DEPLOY).as_posix(), tuple(docs)))
    return bundles


def parse(text: str, source: str) -> list[Doc]:
    return [
        Doc(f"{source}#{index}" if index else source, body)
        for index, body in enumerate(yaml.safe_load_all(text))
        if body is not None
    ]


def render(helm: ModuleType, values: dict[str, Any]) -> list[Doc]:
    """The chart's documents for these values, as ``helm template`` prints them (NOTES.txt aside)."""
    with helm.Chart.load(str(CHART)) as chart:
        rendered: dict[str, str] = chart.render(values, name=RELEASE, namespace=NAMESPACE)
    docs = []
    for template, text in sorted(rendered.items()):
        if template.endswith((".yaml", ".yml")):
            docs += parse(text, template)
    return docs


def lint(helm: ModuleType, values: dict[str, Any]) -> list[str]:
    """``helm lint --strict`` with these values, for each Kubernetes version: its warnings and errors."""
    problems = []
    for version in KUBE_VERSIONS:
        result = helm.lint(str(CHART), values, strict=True, kube_version=f"v{version}.0")
        problems += [f"helm lint (Kubernetes {version}): {error}" for error in result.get("errors") or []]
        problems += [
            f"helm lint (Kubernetes {version}): {message['path']}: {message['error']}"
            for message in result.get("messages") or []
            if message.get("severity", 0) >= 2
        ]
    return problems


# --- Schemas -----------------------------------------------------------------------------------------------


def schema_problems(kv: ModuleType, doc: Doc) -> list[str] | None:
    """Problems against each Kubernetes version's strict schema; None when Kubernetes has no schema for it."""
    problems = []
    for version in KUBE_VERSIONS:
        try:
            kv.validate(doc.body, version, strict=True)
        except kv.SchemaNotFoundError:
            return None
        except kv.ValidationError as exc:
            where = ".".join(str(part) for part in exc.path) or "(top level)"
            problems.append(f"{doc}: Kubernetes {version} schema: {where}: {exc.message}")
    return problems


_DURATION = re.compile(r"^(\d+(ms|s|m|h))+$")
_ENDPOINT_KEYS = {
    "port", "path", "interval", "scrapeTimeout", "scheme", "authorization", "basicAuth", "tlsConfig",
    "honorLabels", "relabelings", "metricRelabelings", "params",
}  # fmt: skip
_MONITOR_SPEC_KEYS = {"selector", "endpoints", "namespaceSelector", "jobLabel", "targetLabels", "sampleLimit"}


def check_service_monitor(doc: Doc, bundle: Bundle) -> tuple[list[str], str]:
    """The fields we use, their types, and that it selects a Service of the set with the port it names."""
    spec = doc.body.get("spec") or {}
    problems = [f"{doc}: unknown spec field {key}" for key in sorted(set(spec) - _MONITOR_SPEC_KEYS)]
    match = (spec.get("selector") or {}).get("matchLabels") or {}
    endpoints = spec.get("endpoints") or []
    if not match:
        problems.append(f"{doc}: spec.selector.matchLabels is empty: it would select every Service")
    if not endpoints:
        problems.append(f"{doc}: no spec.endpoints")
    services = [svc for svc in bundle.of_kind("Service") if _selects(match, svc.body["metadata"].get("labels"))]
    if not services:
        problems.append(f"{doc}: selects no Service of the set")
    for index, endpoint in enumerate(endpoints):
        where = f"{doc}: spec.endpoints.{index}"
        problems += [f"{where}: unknown field {key}" for key in sorted(set(endpoint) - _ENDPOINT_KEYS)]
        port = endpoint.get("port")
        if not isinstance(port, str) or not any(port in _port_names(svc) for svc in services):
            problems.append(f"{where}: port {port!r} is no named port of the Services it selects")
        if not str(endpoint.get("path", "/")).startswith("/"):
            problems.append(f"{where}: path must start with /")
        for key in ("interval", "scrapeTimeout"):
            if key in endpoint and not _DURATION.match(str(endpoint[key])):
                problems.append(f"{where}: {key} {endpoint[key]!r} is not a duration like 30s")
    note = f"selects Service {', '.join(svc.name for svc in services) or '(none)'}"
    return problems, note


# Kinds Kubernetes has no schema for, and how to check each instead.
CUSTOM_CHECKS: dict[tuple[str, str], Callable[[Doc, Bundle], tuple[list[str], str]]] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): check_service_monitor,
}


# --- References between documents ---------------------------------------------------------------------------


def _selects(selector: Mapping[str, str] | None, labels: Mapping[str, str] | None) -> bool:
    return bool(selector) and all((labels or {}).get(key) == value for key, value in (selector or {}).items())


def _port_names(service: Doc) -> set[str]:
    return {port.get("name", "") for port in service.body["spec"].get("ports") or []}


def _containers(pod_spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [*pod_spec.get("initContainers", []), *pod_spec.get("containers", [])]


def _secret_keys(doc: Doc) -> set[str]:
    return set(doc.body.get("data") or {}) | set(doc.body.get("stringData") or {})


def reference_problems(bundle: Bundle) -> list[str]:
    problems = []
    for workload, labels, spec in bundle.pods():
        problems += _pod_references(bundle, workload, spec)
        if workload.kind == "Deployment":
            match = workload.body["spec"]["selector"].get("matchLabels")
            if not _selects(match, labels):
                problems.append(f"{workload}: spec.selector does not select its own Pod template")
    pod_labels = [labels for _, labels, _ in bundle.pods()]
    for service in bundle.of_kind("Service"):
        problems += _service_references(bundle, service)
    for budget in bundle.of_kind("PodDisruptionBudget"):
        if not any(_selects(budget.body["spec"]["selector"].get("matchLabels"), labels) for labels in pod_labels):
            problems.append(f"{budget}: selects no Pod of the set")
    for policy in bundle.of_kind("NetworkPolicy"):
        if not any(_selects(policy.body["spec"]["podSelector"].get("matchLabels"), labels) for labels in pod_labels):
            problems.append(f"{policy}: spec.podSelector selects no Pod of the set")
        for rule in policy.body["spec"].get("ingress") or []:
            for peer in rule.get("from") or []:
                match = (peer.get("podSelector") or {}).get("matchLabels")
                if match and not any(_selects(match, labels) for labels in pod_labels):
                    problems.append(f"{policy}: ingress from {match} matches no Pod of the set")
    for scaler in bundle.of_kind("HorizontalPodAutoscaler"):
        target = scaler.body["spec"]["scaleTargetRef"]
        if bundle.named(target["kind"], target["name"]) is None:
            problems.append(f"{scaler}: scales {target['kind']}/{target['name']}, which is not in the set")
    return problems


def _pod_references(bundle: Bundle, workload: Doc, spec: Mapping[str, Any]) -> list[str]:
    problems = []
    volumes = {volume["name"]: volume for volume in spec.get("volumes") or []}
    for volume in volumes.values():
        if "configMap" in volume and bundle.named("ConfigMap", volume["configMap"]["name"]) is None:
            problems.append(f"{workload}: volume {volume['name']}: no ConfigMap {volume['configMap']['name']}")
        if "secret" in volume:
            problems += _secret_ref(bundle, workload, volume["secret"]["secretName"], None, optional=False)
    for container in _containers(spec):
        where = f"{workload}: container {container['name']}"
        for mount in container.get("volumeMounts") or []:
            if mount["name"] not in volumes:
                problems.append(f"{where}: mounts volume {mount['name']}, which the Pod does not have")
        for env in container.get("env") or []:
            ref = (env.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                problems += _secret_ref(bundle, where, ref["name"], ref["key"], optional=bool(ref.get("optional")))
        for source in container.get("envFrom") or []:
            if "secretRef" in source:
                ref = source["secretRef"]
                problems += _secret_ref(bundle, where, ref["name"], None, optional=bool(ref.get("optional")))
        ports = {port.get("name") for port in container.get("ports") or []}
        for probe_name in ("startupProbe", "livenessProbe", "readinessProbe"):
            port = ((container.get(probe_name) or {}).get("httpGet") or {}).get("port")
            if isinstance(port, str) and port not in ports:
                problems.append(f"{where}: {probe_name} names port {port}, which the container does not have")
    return problems


def _secret_ref(bundle: Bundle, where: object, name: str, key: str | None, *, optional: bool) -> list[str]:
    secret = bundle.named("Secret", name)
    if secret is None:
        if name in bundle.external_secrets or optional:
            return []
        return [f"{where}: Secret {name} is neither in the set nor one it expects to exist"]
    if key is not None and not optional and key not in _secret_keys(secret):
        return [f"{where}: Secret {name} has no key {key}"]
    return []


def _service_references(bundle: Bundle, service: Doc) -> list[str]:
    selector = service.body["spec"].get("selector")
    selected = [spec for _, labels, spec in bundle.pods() if _selects(selector, labels)]
    if not selected:
        return [f"{service}: selects no Pod of the set"]
    problems = []
    for port in service.body["spec"].get("ports") or []:
        target = port.get("targetPort")
        named = {p.get("name") for spec in selected for c in spec.get("containers", []) for p in c.get("ports") or []}
        if isinstance(target, str) and target not in named:
            problems.append(f"{service}: targetPort {target} is no named port of the Pods it selects")
    return problems


# --- The gateway container ----------------------------------------------------------------------------------


def gateway_containers(bundle: Bundle) -> Iterator[tuple[Doc, dict[str, Any], dict[str, Any]]]:
    """(workload, pod spec, gateway container) of every gateway in the set."""
    for workload, _, spec in bundle.pods():
        for container in spec.get("containers") or []:
            if container["name"] == GATEWAY:
                yield workload, spec, container


def env_value(container: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    """The env entry for ``name`` (its last, as Kubernetes takes it), or None."""
    entries = [env for env in container.get("env") or [] if env["name"] == name]
    return entries[-1] if entries else None


def is_sidecar(spec: Mapping[str, Any]) -> bool:
    """A gateway beside other (app) containers in its Pod."""
    return len(spec.get("containers") or []) > 1


def probe_target(probe: Mapping[str, Any]) -> tuple[str, str | int | None]:
    """(path, port) a probe asks: an httpGet's, or the URL in an exec command."""
    if "httpGet" in probe:
        return probe["httpGet"].get("path", "/"), probe["httpGet"].get("port")
    command = " ".join((probe.get("exec") or {}).get("command") or [])
    found = re.search(r"http://127\.0\.0\.1:(\d+)(/[\w/]*)", command)
    return (found.group(2), int(found.group(1))) if found else ("", None)


def security(spec: Mapping[str, Any], container: Mapping[str, Any]) -> dict[str, Any]:
    """The container's effective securityContext: the Pod's, overridden by the container's own."""
    pod = spec.get("securityContext") or {}
    inherited = {key: pod[key] for key in ("runAsNonRoot", "runAsUser", "runAsGroup", "seccompProfile") if key in pod}
    return {**inherited, **(container.get("securityContext") or {})}


_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")
_UNITS = {
    None: 1,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def quantity(value: object) -> float:
    found = _QUANTITY.match(str(value))
    if not found:
        raise ValueError(f"not a quantity: {value!r}")
    return float(found.group(1)) * _UNITS[found.group(2)]


def gateway_problems(bundle: Bundle, workload: Doc, spec: dict[str, Any], gateway: dict[str, Any]) -> list[str]:
    where = f"{workload}: container {GATEWAY}"
    return [
        f"{where}: {problem}"
        for check in (_probes, _resources, _locked_down, _writable, _config_mount, _grace, _listener)
        for problem in check(bundle, spec, gateway)
    ]


def _probes(bundle: Bundle, spec: dict[str, Any], gateway: dict[str, Any]) -> Iterator[str]:
    port = (env_value(gateway, "HYBRID_ROUTER_SERVER__PORT") or {}).get("value", "8080")
    for name, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        probe = gateway.get(name)
        if not probe:
            yield f"no {name}"
            continue
        asked, probe_port = probe_target(probe)
        if asked != path:
            yield f"{name} asks {asked or 'nothing'}, not {path}"
        if is_sidecar(spec) and "exec" not in probe:
            yield f"{name} must run in the container: the kubelet cannot reach a gateway on 127.0.0.1"
        if "exec" in probe and str(probe_port) != str(port):
            yield f"{name} asks port {probe_port}, but the gateway listens on {port}"


def _resources(bundle: Bundle, spec: dict[str, Any], gateway: dict[str, Any]) -> Iterator[str]:
    resources = gateway.get("resources") or {}
    for kind in ("cpu", "memory"):
        request = (resources.get("requests") or {}).get(kind)
        limit = (resources.get("limits") or {}).get(kind)
        if request is None or limit is None:
            yield f"no {kind} request and limit"
        elif quantity(limit) < quantity(request):
            yield f"{kind} limit {limit} is below its request {request}"


def _locked_down(bundle: Bundle, spec: dict[str, Any], gateway: dict[str, Any]) -> Iterator[str]:
    context = security(spec, gateway)
    if context.get("runAsNonRoot") is not True:
        yield "runAsNonRoot is not true"
    if context.get("runAsUser") != GATEWAY_USER:
        yield f"runAsUser is {context.get('runAsUser')}, not the image's user {GATEWAY_USER}"
    if context.get("readOnlyRootFilesystem") is not True:
        yield "readOnlyRootFilesystem is not true"
    if context.get("allowPrivilegeEscalation") is not False:
        yield "allowPrivilegeEscalation is not false"
    if "ALL" not in ((context.get("capabilities") or {}).get("drop") or []):
        yield "capabilities do not drop ALL"
    if (context.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        yield "seccompProfile is not RuntimeDefault"


def _writable(bundle: Bundle, spec: dict[str, Any], gateway: dict[str, Any]) -> Iterator[str]:
    volumes = {volume["name"]: volume for volume in spec.get("volumes") or []}
    mounts = {mount["mountPath"]: mount for mount in gateway.get("volumeMounts") or []}
    for path in ("/tmp", "/var/lib/hybrid-router"):
        mount = mounts.get(path)
        if mount is None or "emptyDir" not in volumes.get(mount["name"], {}):
            yield f"{path} is not an emptyDir: the root filesystem is read-only"


def _config_mount(bundle: Bundle, spec: dict[str, Any], gateway: dict[str, Any]) -> Iterator[str]:
    path = (env_value(gateway, "HYBRID_ROUTER_CONFIG") or {}).get("value")
    if not path:
        yield "no HYBRID_ROUTER_CONFIG: it would serve the embedded default config"
        return
    found = config_text(bundle, spec, gateway)
    if found is None:
        yield f"HYBRID_ROUTER_CONFIG {path} is not a key of a mounted ConfigMap of the set"
    for mount in gateway.get("volumeMounts") or []:
        if mount.get("subPath") and Path(path).is_relative_to(mount["mountPath"]):
            yield f"{mount['mountPath']} is a subPath mount: ConfigMap changes would never reach it (hot reload)"


def config_text(bundle: Bundle, spec: Mapping[str, Any], gateway: Mapping[str, Any]) -> str | None:
    """The gateway's config file, from the ConfigMap mounted where HYBRID_ROUTER_CONFIG points."""
    path = Path((env_value(gateway, "HYBRID_ROUTER_CONFIG") or {}).get("value", "/nowhere"))
    volumes = {volume["name"]: volume for volume in spec.get("volumes") or []}
    for mount in gateway.get("volumeMounts") or []:
        volume = volumes.get(mount["name"], {})
        if "configMap" in volume and path.parent == Path(mount["mountPath"]):
            config_map = bundle.named("ConfigMap", volume["configMap"]["name"])
            if config_map is not None:
                text = (config_map.body.get("data") or {}).get(path.name)
                return str(text) if text is not None else None
    return None


def _grace(bundle: Bundle, spec: dict[str, Any], gateway: dict[str, Any]) -> Iterator[str]:
    command = (((gateway.get("lifecycle") or {}).get("preStop") or {}).get("exec") or {}).get("command") or []
    pause = int(command[1]) if len(command) == 2 and command[0] == "sleep" else 0
    grace = spec.get("terminationGracePeriodSeconds", 30)
    if grace < pause + DRAIN_S:
        yield f"terminationGracePeriodSeconds {grace} < preStop {pause} s + the {DRAIN_S} s drain"


def _listener(bundle: Bundle, spec: dict[str, Any], gateway: dict[str, Any]) -> Iterator[str]:
    host = (env_value(gateway, "HYBRID_ROUTER_SERVER__HOST") or {}).get("value")
    if is_sidecar(spec):
        if host != "127.0.0.1":
            yield f"beside an app it must listen on 127.0.0.1 (HYBRID_ROUTER_SERVER__HOST), not {host}"
        return
    if host in (None, "auto") or host.startswith("127.") or host in ("::1", "localhost"):
        yield f"a shared gateway must listen on every interface (HYBRID_ROUTER_SERVER__HOST), not {host}"
    if client_keys(bundle, spec, gateway) is None:
        yield f"no client keys: ${KEYS_ENV} from a Secret (or hashes in its config); it would refuse to start"


def client_keys(bundle: Bundle, spec: Mapping[str, Any], gateway: Mapping[str, Any]) -> str | None:
    """Where a gateway's client keys come from: "secret", "config", or None."""
    ref = ((env_value(gateway, KEYS_ENV) or {}).get("valueFrom") or {}).get("secretKeyRef")
    if ref and (ref["name"] in bundle.external_secrets or bundle.named("Secret", ref["name"]) is not None):
        return "secret"
    auth = (yaml.safe_load(config_text(bundle, spec, gateway) or "") or {}).get("auth") or {}
    return "config" if auth.get("api_key_hashes") or auth.get("keys") else None


# --- The gateway's own config check ------------------------------------------------------------------------


def container_env(bundle: Bundle, gateway: Mapping[str, Any]) -> dict[str, str]:
    """The env the container would see: a required Secret key that is empty or unknown here stands in as a
    placeholder (the operator fills it in); empty optional ones stay unset."""
    env: dict[str, str] = {}
    for source in gateway.get("envFrom") or []:
        from_secret = bundle.named("Secret", (source.get("secretRef") or {}).get("name", ""))
        if from_secret is not None:
            env.update({key: _secret_value(from_secret, key) for key in sorted(_secret_keys(from_secret))})
    for entry in gateway.get("env") or []:
        ref = (entry.get("valueFrom") or {}).get("secretKeyRef")
        if "value" in entry:
            env[entry["name"]] = str(entry["value"])
        elif ref:
            secret = bundle.named("Secret", ref["name"])
            known = secret is not None and ref["key"] in _secret_keys(secret)
            value = _secret_value(secret, ref["key"]) if secret is not None and known else ""
            env[entry["name"]] = value or ("" if ref.get("optional") else f"placeholder-{ref['key'].lower()}")
    return {name: value for name, value in env.items() if value}


def _secret_value(secret: Doc, key: str) -> str:
    if key in (secret.body.get("stringData") or {}):
        return str(secret.body["stringData"][key])
    return base64.b64decode(secret.body["data"][key]).decode()


def built_models_dir() -> Path:
    """Where `make setup` (hybrid-router edge build) put the models: as edge_models/catalog.py finds them."""
    configured = os.environ.get("HYBRID_ROUTER_MODELS_DIR")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "hybrid-router" / "models"


def config_check(bundle: Bundle, spec: Mapping[str, Any], gateway: Mapping[str, Any]) -> tuple[bool, str]:
    """``hybrid-router config check`` on the gateway's config with its env: (passed, what it printed)."""
    text = config_text(bundle, spec, gateway)
    if text is None:
        return False, "no config file"
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch, "config.yaml")
        path.write_text(text)
        env = {"PATH": os.environ.get("PATH", ""), "HOME": scratch, "LANG": "C.UTF-8"}
        # The image has its models at /models; here, the ones `make setup` built stand in.
        env["HYBRID_ROUTER_MODELS_DIR"] = str(built_models_dir())
        env.update(container_env(bundle, gateway))
        env["HYBRID_ROUTER_CONFIG"] = str(path)
        done = subprocess.run(
            [sys.executable, "-m", "service.cli", "config", "check", str(path)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    output = (done.stdout + done.stderr).replace(str(path), "config.yaml").strip()
    return done.returncode == 0, output


# --- Running it all ----------------------------------------------------------------------------------------


def chart_bundles(helm: ModuleType, report: Report) -> list[Bundle]:
    bundles = []
    for name, values in SCENARIOS.items():
        try:
            docs = render(helm, values)
        except helm.HelmError as exc:
            report.problems.append(f"helm/{name}: does not render: {exc}")
            continue
        bundles.append(Bundle(f"helm/{name}", tuple(docs), EXTERNAL_SECRETS.get(name, frozenset())))
        lint_problems = lint(helm, values)
        report.problems += [f"helm/{name}: {problem}" for problem in lint_problems]
        report.linted += not lint_problems
    for name, (values, expected) in MUST_FAIL.items():
        try:
            render(helm, values)
        except helm.HelmError as exc:
            if expected in str(exc):
                report.refused += 1
                report.lines.append(f"refused  helm: {name}: {expected}")
                continue
            report.problems.append(f"helm: {name}: failed, but not saying {expected!r}: {exc}")
        else:
            report.problems.append(f"helm: {name}: rendered; it must fail saying {expected!r}")
    return bundles


def check_bundle(
    kv: ModuleType, bundle: Bundle, report: Report, checked: dict[tuple[str, str], tuple[bool, str]]
) -> None:
    for doc in bundle.docs:
        problems = schema_problems(kv, doc)
        if problems is None:
            custom = CUSTOM_CHECKS.get((str(doc.body.get("apiVersion")), doc.kind))
            if custom is None:
                report.problems.append(f"{bundle.name}: {doc}: Kubernetes has no schema for it, nor has this script")
                continue
            problems, note = custom(doc, bundle)
            report.custom += not problems
            report.lines.append(
                f"ok       {bundle.name}: {doc} (custom resource, no schema: checked its fields; {note})"
            )
        else:
            report.validated += not problems
            report.lines.append(f"ok       {bundle.name}: {doc}")
        report.problems += [f"{bundle.name}: {problem}" for problem in problems]
    report.problems += [f"{bundle.name}: {problem}" for problem in reference_problems(bundle)]
    for workload, spec, gateway in gateway_containers(bundle):
        report.gateways += 1
        report.problems += [
            f"{bundle.name}: {problem}" for problem in gateway_problems(bundle, workload, spec, gateway)
        ]
        key = (config_text(bundle, spec, gateway) or "", repr(sorted(container_env(bundle, gateway).items())))
        if key not in checked:
            checked[key] = config_check(bundle, spec, gateway)
        passed, output = report.configs[f"{bundle.name}: {workload}"] = checked[key]
        if not passed:
            report.problems.append(f"{bundle.name}: {workload}: hybrid-router config check failed: {output}")


def run(bundles: Iterable[Bundle] | None = None) -> Report:
    """Every check over deploy/k8s and the chart's scenarios (or over ``bundles``): the :class:`Report`."""
    helm, kv = load_tools()
    report = Report()
    report.bundles = list(bundles) if bundles is not None else [*manifest_bundles(), *chart_bundles(helm, report)]
    checked: dict[tuple[str, str], tuple[bool, str]] = {}
    for bundle in report.bundles:
        check_bundle(kv, bundle, report, checked)
    if not any(gateway_containers(bundle) for bundle in report.bundles):
        report.problems.append("no gateway container found: nothing was checked")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-q", "--quiet", action="store_true", help="print only problems and the summary")
    args = parser.parse_args(argv)
    try:
        report = run()
    except ToolMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    helm, kv = load_tools()
    print(f"helm-python-sdk: Helm SDK {helm.helm_sdk_version()}; kubernetes-validate {kv.__version__}")
    if not args.quiet:
        print("\n".join(report.lines))
    for problem in report.problems:
        print(f"PROBLEM  {problem}")
    print(report.summary())
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
