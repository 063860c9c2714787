"""The Kubernetes manifests (deploy/k8s) and the Helm chart (deploy/helm/hybrid-router).

deploy/check_manifests.py renders the chart with Helm's own engine, validates every document against the
Kubernetes schemas and runs the gateway's config check on each; these tests run it, assert what the
deployment promises one property at a time, and show that each check catches what it is there for.
It needs helm-python-sdk and kubernetes-validate: without them every test here fails, saying how to install them.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

SCRIPT = Path(__file__).resolve().parent.parent / "deploy" / "check_manifests.py"


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_manifests", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


cm = _load_script()
Gateway = tuple[Any, Any, dict[str, Any], dict[str, Any]]  # (bundle, workload, pod spec, gateway container)


@pytest.fixture(scope="module")
def tools() -> tuple[ModuleType, ModuleType]:
    try:
        return cm.load_tools()
    except cm.ToolMissing as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="module")
def report(tools: tuple[ModuleType, ModuleType]) -> Any:
    return cm.run()


def gateways(report: Any) -> Iterator[Gateway]:
    for bundle in report.bundles:
        for workload, spec, container in cm.gateway_containers(bundle):
            yield bundle, workload, spec, container


def env(container: dict[str, Any], name: str) -> dict[str, Any]:
    entry = cm.env_value(container, name)
    assert entry is not None, f"{container['name']} has no env var {name}"
    return entry


def bundle_named(report: Any, name: str) -> Any:
    return next(bundle for bundle in report.bundles if bundle.name == name)


def test_every_manifest_and_every_rendering_of_the_chart_passes(report: Any) -> None:
    assert report.problems == [], "\n".join(report.problems)
    assert {bundle.name for bundle in report.bundles} == {
        "k8s/sidecar",
        "k8s/shared",
        *(f"helm/{name}" for name in cm.SCENARIOS),
    }
    documents = sum(len(bundle.docs) for bundle in report.bundles)
    assert documents >= 45
    # Every document was validated: against the schemas, or (the ServiceMonitor alone) structurally.
    assert report.validated + report.custom == documents
    assert report.custom == 1
    assert report.linted == len(cm.SCENARIOS)
    assert report.refused == len(cm.MUST_FAIL)
    assert len(report.configs) == report.gateways == len(cm.SCENARIOS) + 2
    assert all(passed for passed, _ in report.configs.values())


def test_the_shared_set_and_the_chart_have_every_kind_asked_for(report: Any) -> None:
    shared = {doc.kind for doc in bundle_named(report, "k8s/shared").docs}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap", "Secret"} <= shared
    full = {(doc.kind, doc.body["apiVersion"]) for doc in bundle_named(report, "helm/standalone-full").docs}
    assert {
        ("HorizontalPodAutoscaler", "autoscaling/v2"),
        ("PodDisruptionBudget", "policy/v1"),
        ("ServiceMonitor", "monitoring.coreos.com/v1"),
    } <= full
    plain = {doc.kind for doc in bundle_named(report, "helm/standalone").docs}
    assert "ServiceMonitor" not in plain and "HorizontalPodAutoscaler" not in plain  # both off by default


def test_every_gateway_is_probed_bounded_and_locked_down(report: Any) -> None:
    resources = []
    for bundle, workload, spec, gateway in gateways(report):
        where = f"{bundle.name} {workload}"
        assert cm.probe_target(gateway["startupProbe"])[0] == "/healthz", where
        assert cm.probe_target(gateway["livenessProbe"])[0] == "/healthz", where
        assert cm.probe_target(gateway["readinessProbe"])[0] == "/readyz", where
        for kind in ("requests", "limits"):
            assert set(gateway["resources"][kind]) == {"cpu", "memory"}, where
        resources.append(gateway["resources"])
        context = cm.security(spec, gateway)
        assert context["runAsNonRoot"] is True, where
        assert context["runAsUser"] == 10001, where
        assert context["readOnlyRootFilesystem"] is True, where
        assert context["allowPrivilegeEscalation"] is False, where
        assert context["capabilities"]["drop"] == ["ALL"], where
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert spec["terminationGracePeriodSeconds"] == 40, where
        assert gateway["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"], where
        mounts = {mount["mountPath"]: mount["name"] for mount in gateway["volumeMounts"]}
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]], where
        assert "emptyDir" in volumes[mounts["/var/lib/hybrid-router"]], where
        assert "configMap" in volumes[mounts["/etc/hybrid-router"]], where
        assert env(gateway, "HYBRID_ROUTER_CONFIG")["value"] == "/etc/hybrid-router/config.yaml", where
    # One measured size everywhere: the manifests and the chart's defaults agree.
    assert all(each == resources[0] for each in resources)
    assert cm.quantity(resources[0]["limits"]["memory"]) >= cm.quantity(resources[0]["requests"]["memory"])


def test_a_sidecar_gateway_listens_on_loopback_and_is_probed_from_inside_its_container(report: Any) -> None:
    sidecars = [gateway for gateway in gateways(report) if cm.is_sidecar(gateway[2])]
    assert {bundle.name for bundle, *_ in sidecars} == {"k8s/sidecar", "helm/sidecar", "helm/sidecar-autoscaling"}
    for bundle, workload, spec, gateway in sidecars:
        where = f"{bundle.name} {workload}"
        assert env(gateway, "HYBRID_ROUTER_SERVER__HOST")["value"] == "127.0.0.1", where
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert "exec" in gateway[probe] and "httpGet" not in gateway[probe], where
            assert cm.probe_target(gateway[probe])[1] == 8080, where
        assert "ports" not in gateway, where  # nothing outside the Pod reaches it
        (app,) = [container for container in spec["containers"] if container is not gateway]
        assert env(app, "OPENAI_BASE_URL")["value"] == "http://127.0.0.1:8080/v1", where
        assert bundle.name in {name.partition(": ")[0] for name in report.configs}
        _, output = report.configs[f"{bundle.name}: {workload}"]
        assert "127.0.0.1:8080" in output


def test_a_shared_gateway_listens_everywhere_with_client_keys_from_a_secret(report: Any) -> None:
    shared = [gateway for gateway in gateways(report) if not cm.is_sidecar(gateway[2])]
    assert {bundle.name for bundle, *_ in shared} == {
        "k8s/shared",
        "helm/standalone",
        "helm/standalone-full",
        "helm/standalone-existing-secret",
        "helm/standalone-keys-in-config",
    }
    for bundle, workload, spec, gateway in shared:
        where = f"{bundle.name} {workload}"
        assert env(gateway, "HYBRID_ROUTER_SERVER__HOST")["value"] == "0.0.0.0", where
        assert gateway["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}], where
        ref = env(gateway, "HYBRID_ROUTER_API_KEYS")["valueFrom"]["secretKeyRef"]
        assert ref["key"] == "HYBRID_ROUTER_API_KEYS", where
        assert ref["name"] in bundle.external_secrets or bundle.named("Secret", ref["name"]) is not None, where
        # Required, unless the config itself holds key hashes.
        keys_in_config = bundle.name == "helm/standalone-keys-in-config"
        assert ref.get("optional", False) is keys_in_config, where
        assert cm.client_keys(bundle, spec, gateway) == "secret", where
        if keys_in_config:
            assert yaml.safe_load(cm.config_text(bundle, spec, gateway))["auth"]["api_key_hashes"], where
        _, output = report.configs[f"{bundle.name}: {workload}"]
        assert "client keys required on 0.0.0.0:8080" in output, where


def test_shared_gateways_count_budgets_in_one_redis(report: Any) -> None:
    shared = bundle_named(report, "k8s/shared")
    ((_, _, spec, gateway),) = [g for g in gateways(report) if g[0] is shared]
    config = yaml.safe_load(cm.config_text(shared, spec, gateway))
    assert config["state"]["url"] == "redis://redis:6379/0"
    redis = shared.named("Service", "redis")
    assert redis is not None and redis.body["spec"]["ports"][0]["port"] == 6379
    assert shared.named("Deployment", "hybrid-router").body["spec"]["replicas"] == 2
    assert shared.named("HorizontalPodAutoscaler", "hybrid-router").body["spec"]["minReplicas"] == 2
    assert shared.named("PodDisruptionBudget", "hybrid-router").body["spec"]["minAvailable"] == 1


@pytest.mark.parametrize("name", list(cm.MUST_FAIL))
def test_the_chart_refuses_values_that_could_not_work(tools: tuple[ModuleType, ModuleType], name: str) -> None:
    helm, _ = tools
    values, expected = cm.MUST_FAIL[name]
    with pytest.raises(helm.HelmError, match=expected):
        cm.render(helm, values)


def test_schema_validation_catches_a_misspelt_field_a_wrong_type_and_an_unknown_kind(
    tools: tuple[ModuleType, ModuleType],
) -> None:
    _, kv = tools
    shared = next(bundle for bundle in cm.manifest_bundles() if bundle.name == "k8s/shared")
    deployment = shared.named("Deployment", "hybrid-router")
    assert cm.schema_problems(kv, deployment) == []
    typo = copy.deepcopy(deployment.body)
    typo["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    (problem, *_) = cm.schema_problems(kv, cm.Doc("typo", typo))
    assert "readinesProbe" in problem
    wrong = copy.deepcopy(deployment.body)
    wrong["spec"]["replicas"] = "two"
    assert any("spec.replicas" in problem for problem in cm.schema_problems(kv, cm.Doc("wrong", wrong)))
    gizmo = cm.Doc("gizmo", {"apiVersion": "example.com/v1", "kind": "Gizmo", "metadata": {"name": "g"}})
    assert cm.schema_problems(kv, gizmo) is None
    found = cm.run([cm.Bundle("gizmo", (gizmo,))])
    assert any("no schema for it" in problem for problem in found.problems)


def _shared_gateway() -> tuple[Any, Any, dict[str, Any], dict[str, Any]]:
    bundle = copy.deepcopy(next(bundle for bundle in cm.manifest_bundles() if bundle.name == "k8s/shared"))
    ((workload, spec, gateway),) = cm.gateway_containers(bundle)
    return bundle, workload, spec, gateway


def test_a_gateway_with_a_weak_spot_is_reported(tools: tuple[ModuleType, ModuleType]) -> None:
    bundle, workload, spec, gateway = _shared_gateway()
    assert cm.gateway_problems(bundle, workload, spec, gateway) == []
    del gateway["readinessProbe"]
    gateway["securityContext"]["readOnlyRootFilesystem"] = False
    del gateway["resources"]["limits"]["memory"]
    spec["terminationGracePeriodSeconds"] = 30
    gateway["env"] = [e for e in gateway["env"] if e["name"] != "HYBRID_ROUTER_API_KEYS"]
    env(gateway, "HYBRID_ROUTER_SERVER__HOST")["value"] = "auto"
    problems = "\n".join(cm.gateway_problems(bundle, workload, spec, gateway))
    for expected in (
        "no readinessProbe",
        "readOnlyRootFilesystem is not true",
        "no memory request and limit",
        "terminationGracePeriodSeconds 30 < preStop 5 s + the 30 s drain",
        "no client keys",
        "must listen on every interface",
    ):
        assert expected in problems


def test_a_sidecar_gateway_probed_over_the_network_or_listening_everywhere_is_reported(
    tools: tuple[ModuleType, ModuleType],
) -> None:
    bundle = copy.deepcopy(next(bundle for bundle in cm.manifest_bundles() if bundle.name == "k8s/sidecar"))
    ((workload, spec, gateway),) = cm.gateway_containers(bundle)
    gateway["livenessProbe"] = {"httpGet": {"path": "/healthz", "port": 8080}}
    env(gateway, "HYBRID_ROUTER_SERVER__HOST")["value"] = "0.0.0.0"
    problems = "\n".join(cm.gateway_problems(bundle, workload, spec, gateway))
    assert "the kubelet cannot reach a gateway on 127.0.0.1" in problems
    assert "beside an app it must listen on 127.0.0.1" in problems


def test_references_to_what_is_not_in_the_set_are_reported(tools: tuple[ModuleType, ModuleType]) -> None:
    bundle, _, spec, gateway = _shared_gateway()
    assert cm.reference_problems(bundle) == []
    spec["volumes"][0]["configMap"]["name"] = "elsewhere"
    gateway["env"].append({"name": "X", "valueFrom": {"secretKeyRef": {"name": "hybrid-router", "key": "NOPE"}}})
    service = bundle.named("Service", "hybrid-router")
    service.body["spec"]["selector"] = {"app.kubernetes.io/name": "nobody"}
    problems = "\n".join(cm.reference_problems(bundle))
    assert "no ConfigMap elsewhere" in problems
    assert "Secret hybrid-router has no key NOPE" in problems
    assert "Service/hybrid-router: selects no Pod of the set" in problems
