"""docker-compose.yml and what runs beside the gateway: Redis, Prometheus, Grafana and the demo's cloud emulator.

Nothing here starts a container (the stack's images cannot be pulled where the tests run). Instead:

* Compose's own ``config`` validates the file for each profile (``apt-get install -y docker-compose``;
  the tests fail without it);
* every PromQL expression of the Grafana dashboard is checked against the metric names and labels the
  gateway really exports (a gateway built from the stack's config, scraped);
* every gateway config in deploy/compose/ passes ``hybrid-router config check``;
* the demo's emulator is driven over a real socket by the OpenAI SDK and by the gateway itself;
* with ``prometheus`` and ``nginx-light`` from apt (.ci/run installs them; missing, these fail): ``promtool`` checks
  prometheus.yml and parses every dashboard query, a real Prometheus scraping a real gateway answers each
  query, and nginx with deploy/compose/nginx.conf passes streams to two emulators standing in for replicas.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import openai
import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.gateway import Gateway
from service.settings import Settings
from tests.support.processes import ROOT, Server, free_port, running

COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE_DIR = ROOT / "deploy" / "compose"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "hybrid-router.json"
GATEWAY_CONFIGS = sorted(COMPOSE_DIR.glob("*.yaml"))
REPLICAS = ("gateway-1", "gateway-2")
CORE = {"app", "hybrid-router", "redis", "prometheus", "grafana"}
PROFILES = {"demo": {"cloud-emulator", "demo-traffic"}, "replicas": {*REPLICAS, "lb"}}
DEMO_KEY = "sk-test-compose-demo-key"
# Labels Prometheus adds to every series it scrapes (the job, the target, prometheus.yml's static labels).
TARGET_LABELS = {"instance", "job", "deployment"}
INSTALL_COMPOSE = (
    "docker-compose is not installed, so docker-compose.yml cannot be validated: "
    "apt-get install -y docker-compose (1.29 validates offline), or install Docker Compose v2 (`docker compose`)"
)


# --- docker-compose config


def compose_command() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    pytest.fail(INSTALL_COMPOSE)


def compose_config(*profiles: str, **env: str) -> dict[str, Any]:
    """``docker-compose config`` for these profiles, with only ``env`` set of the variables the file reads."""
    args = [*compose_command(), "-f", str(COMPOSE_FILE), *(a for p in profiles for a in ("--profile", p)), "config"]
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "DOCKER_HOST")}
    result = subprocess.run(args, cwd=ROOT, env={**base, **env}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stderr}"
    parsed: dict[str, Any] = yaml.safe_load(result.stdout)
    return parsed


@pytest.fixture(scope="module")
def stack() -> dict[str, Any]:
    """Every profile at once, with the demo's config chosen and client keys set."""
    return compose_config(
        "demo",
        "replicas",
        GATEWAY_CONFIG="config.demo.yaml",
        HYBRID_ROUTER_API_KEYS="k1,k2",
        CLOUD_EMULATOR_API_KEY=DEMO_KEY,
    )


def services(config: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = config["services"]
    return found


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # Compose may print KEY=VALUE lists
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path, for each bind mount of ``service``."""
    found = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):  # SOURCE:TARGET[:MODE]
            source, target = volume.split(":")[:2]
            volume = {"type": "bind" if source.startswith(("/", ".")) else "volume", "source": source, "target": target}
        if volume.get("type", "bind") == "bind":
            found[volume["target"].rstrip("/")] = Path(volume["source"])
    return found


def in_container(service: dict[str, Any], path: str) -> Path:
    """The host file behind ``path`` in ``service``, through its bind mounts."""
    for target, source in mounts(service).items():
        if path == target:
            return source
        if path.startswith(target + "/"):
            return source / path[len(target) + 1 :]
    raise AssertionError(f"{path} is not on a bind mount")


def image_entrypoint() -> list[str]:
    """The ENTRYPOINT of deploy/Dockerfile's last stage, the image every gateway service runs."""
    last_stage = (ROOT / "deploy" / "Dockerfile").read_text().rsplit("\nFROM ", 1)[-1]
    found = re.findall(r"^ENTRYPOINT\s+(\[.*\])\s*$", last_stage, re.M)
    entrypoint: list[str] = json.loads(found[-1]) if found else []
    return entrypoint


def script_run_by(service: dict[str, Any]) -> Path:
    """The host file of the Python script a gateway-image service runs: its entrypoint (or the image's) + command."""
    argv = [*(service.get("entrypoint") or image_entrypoint()), *service.get("command", [])]
    if argv[:1] == ["tini"]:
        argv = argv[argv.index("--") + 1 :] if "--" in argv else argv[1:]
    assert argv[0] == "python", f"{service['command']} does not run a script: {argv}"
    return in_container(service, argv[1])


@pytest.mark.parametrize(
    ("profiles", "expected"),
    [
        ((), CORE),
        (("demo",), CORE | PROFILES["demo"]),
        (("replicas",), CORE | PROFILES["replicas"]),
        (("demo", "replicas"), CORE | PROFILES["demo"] | PROFILES["replicas"]),
    ],
)
def test_each_profile_is_valid_without_any_secret(profiles: tuple[str, ...], expected: set[str]) -> None:
    # No OPENAI_API_KEY, no client keys: a required variable would fail here for every profile.
    config = compose_config(*profiles)
    names = set(services(config))
    if compose_command() == ["docker-compose"]:
        # 1.29 prints every service; the profile filter applies at `up`. Check the profiles it prints.
        assert names == CORE | PROFILES["demo"] | PROFILES["replicas"]
        active = {n for n, s in services(config).items() if not s.get("profiles") or set(s["profiles"]) & set(profiles)}
        assert active == expected
    else:
        assert names == expected


def test_the_gateway_is_a_hardened_sidecar_of_the_app(stack: dict[str, Any]) -> None:
    sidecar = services(stack)["hybrid-router"]
    assert sidecar["network_mode"] == "service:app"
    assert sidecar["image"] == "hybrid-router:latest"
    assert sidecar["build"]["dockerfile"] == "deploy/Dockerfile"
    assert Path(sidecar["build"]["context"]).resolve() == ROOT
    assert sidecar["read_only"] is True
    # An init as PID 1 (reaps, passes SIGTERM on so the gateway drains): Compose's, or the image's own tini.
    assert sidecar.get("init") is True or image_entrypoint()[:1] == ["tini"]
    assert "/tmp" in sidecar["tmpfs"]
    assert str(sidecar["stop_grace_period"]) in ("40s", "40000000000")
    assert "http://127.0.0.1:8080/healthz" in " ".join(sidecar["healthcheck"]["test"])
    env = environment(sidecar)
    assert env["HYBRID_ROUTER_SERVER__HOST"] == "127.0.0.1"
    assert env["HYBRID_ROUTER_SERVER__PORT"] == "8080"
    # The replicas' client keys must not lock the app out of its own sidecar.
    assert "HYBRID_ROUTER_API_KEYS" not in env
    assert not sidecar.get("ports")


@pytest.mark.parametrize(("gateway_config", "file"), [(None, "config.yaml"), ("config.demo.yaml", "config.demo.yaml")])
def test_the_sidecar_reads_a_config_from_deploy_compose(gateway_config: str | None, file: str) -> None:
    config = compose_config(**({"GATEWAY_CONFIG": gateway_config} if gateway_config else {}))
    sidecar = services(config)["hybrid-router"]
    path = environment(sidecar)["HYBRID_ROUTER_CONFIG"]
    assert in_container(sidecar, path).resolve() == (COMPOSE_DIR / file).resolve()


def test_prometheus_shares_the_app_namespace_to_scrape_the_loopback_gateway(stack: dict[str, Any]) -> None:
    found = services(stack)
    prometheus, app = found["prometheus"], found["app"]
    # The gateway binds 127.0.0.1: only a process in the app's namespace can scrape it.
    assert prometheus["network_mode"] == "service:app"
    mounted = in_container(prometheus, "/etc/prometheus/prometheus.yml")
    assert mounted.resolve() == PROMETHEUS_CONFIG.resolve()
    scrape = yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]
    sidecar_job = next(job for job in scrape if job["job_name"] == "hybrid-router")
    assert sidecar_job["static_configs"][0]["targets"] == ["127.0.0.1:8080"]
    assert sidecar_job.get("metrics_path", "/metrics") == "/metrics"
    # A namespace's ports are published by its owner: Prometheus's UI is the app's port 9090.
    published = {str(p.get("target") if isinstance(p, dict) else p.split(":")[-1].split("/")[0]) for p in app["ports"]}
    assert "9090" in published
    # Grafana, on the compose network, reaches Prometheus through the app's name.
    datasource = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://app:9090"


def test_the_replicas_are_scraped_one_by_one(stack: dict[str, Any]) -> None:
    scrape = yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]
    job = next(job for job in scrape if job["job_name"] == "hybrid-router-replicas")
    assert job["dns_sd_configs"][0]["names"] == list(REPLICAS)
    assert job["dns_sd_configs"][0]["port"] == 8080


@pytest.mark.parametrize("config", GATEWAY_CONFIGS, ids=lambda p: p.name)
def test_the_state_store_is_the_stacks_redis(config: Path, stack: dict[str, Any]) -> None:
    url = urlsplit(yaml.safe_load(config.read_text())["state"]["url"])
    assert url.scheme == "redis"
    redis = services(stack)[url.hostname or ""]
    assert url.port == 6379
    assert "redis-cli" in " ".join(redis["healthcheck"]["test"])
    # The sidecar resolves names through the app's namespace: the app and Redis must share a network.
    app = services(stack)["app"]
    assert "network_mode" not in app and "network_mode" not in redis
    assert set(app.get("networks", {"default": None})) & set(redis.get("networks", {"default": None}))


def test_the_demo_points_the_cloud_target_at_the_emulator(stack: dict[str, Any]) -> None:
    found = services(stack)
    emulator, sidecar = found["cloud-emulator"], found["hybrid-router"]
    assert emulator["profiles"] == ["demo"]
    assert emulator["image"] == sidecar["image"]
    assert script_run_by(emulator).resolve() == (COMPOSE_DIR / "cloud_emulator.py").resolve()
    port = int(emulator["command"][emulator["command"].index("--port") + 1])
    cloud = yaml.safe_load((COMPOSE_DIR / "config.demo.yaml").read_text())["targets"]["cloud"]
    assert urlsplit(cloud["base_url"])[1] == f"cloud-emulator:{port}"
    # The dummy key the sidecar sends is the one the emulator expects.
    assert environment(sidecar)[cloud["api_key_env"]] == environment(emulator)["CLOUD_EMULATOR_API_KEY"] == DEMO_KEY
    traffic = found["demo-traffic"]
    assert traffic["network_mode"] == "service:app"
    assert script_run_by(traffic).resolve() == (COMPOSE_DIR / "demo_traffic.py").resolve()


def test_the_replicas_listen_everywhere_with_client_keys_behind_the_balancer(stack: dict[str, Any]) -> None:
    found = services(stack)
    for name in REPLICAS:
        replica = found[name]
        assert replica["profiles"] == ["replicas"]
        assert replica["image"] == "hybrid-router:latest"
        assert "network_mode" not in replica
        env = environment(replica)
        assert env["HYBRID_ROUTER_SERVER__HOST"] == "0.0.0.0"
        assert env["HYBRID_ROUTER_API_KEYS"] == "k1,k2"
        assert not any("ALLOW_UNAUTHENTICATED" in key for key in env)
        assert not replica.get("ports"), "replicas are reached through the balancer only"
    lb = found["lb"]
    assert lb["profiles"] == ["replicas"]
    assert set(lb["depends_on"]) == set(REPLICAS)
    nginx = in_container(lb, "/etc/nginx/nginx.conf").read_text()
    assert re.findall(r"^\s*server\s+([\w-]+):8080", nginx, re.M) == list(REPLICAS)
    assert "proxy_buffering off" in nginx  # streams pass token by token


def test_a_replica_without_client_keys_refuses_to_start() -> None:
    """Compose cannot require the keys (a `:?` variable would break every profile); the gateway does."""
    replica_env = {"HYBRID_ROUTER_SERVER__HOST": "0.0.0.0"}
    refused = config_check(COMPOSE_DIR / "config.yaml", replica_env)
    assert refused.returncode != 0
    assert "refusing to serve on 0.0.0.0:8080 without client keys" in refused.stderr
    keyed = config_check(COMPOSE_DIR / "config.yaml", {**replica_env, "HYBRID_ROUTER_API_KEYS": "k1,k2"})
    assert keyed.returncode == 0, keyed.stderr
    assert "client keys required on 0.0.0.0:8080" in keyed.stdout


# --- gateway configs


def config_check(config: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cli = Path(sys.executable).with_name("hybrid-router")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HYBRID_ROUTER_")}
    return subprocess.run(
        [str(cli), "config", "check", str(config)], env={**clean, **(env or {})}, capture_output=True, text=True
    )


@pytest.mark.parametrize("config", GATEWAY_CONFIGS, ids=lambda p: p.name)
def test_each_compose_config_passes_config_check(config: Path) -> None:
    result = config_check(config)
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_the_image_can_open_the_stacks_state_store() -> None:
    """The configs use redis://, which needs the `redis` extra in the image (router/state/redis.py)."""
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert re.search(r"pip install[^\n]*\.\[[^\]]*\bredis\b", dockerfile), (
        "docker-compose.yml's gateways keep their state in Redis, but deploy/Dockerfile installs no redis "
        "client: pip install '.[redis]'"
    )


# --- the dashboard's PromQL against what the gateway exports


def compose_settings(config: Path, **changes: Any) -> Settings:
    data = yaml.safe_load(config.read_text())
    data["state"] = {**data["state"], "url": "memory://"}  # no Redis here; the metrics do not depend on it
    data.update(changes)
    return Settings(**data)


@pytest.fixture(scope="module")
def exported() -> dict[str, set[str]]:
    """Sample name -> label names, from a scrape of a gateway built from the demo stack's config."""
    registry = CollectorRegistry()
    gateway = Gateway.from_settings(compose_settings(COMPOSE_DIR / "config.demo.yaml"), registry=registry)
    # A labelled metric shows no sample until it has a child: give each one, so every name is listed.
    for metric in vars(gateway.metrics).values():
        if isinstance(metric, MetricWrapperBase) and metric._labelnames:
            metric.labels(*["x"] * len(metric._labelnames))
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


def queries() -> list[tuple[str, dict[str, Any]]]:
    """(panel title, target) for every query of every panel."""
    return [(p["title"], t) for p in panels(dashboard()["panels"]) for t in p.get("targets", [])]


_METRIC = re.compile(r"\b(hybrid_router_[a-z0-9_]+)\b(\{[^}]*\})?")
_MATCHER = re.compile(r'([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)\s*"')
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
_LEGEND = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def check_expression(expr: str, legend: str, exported: dict[str, set[str]]) -> list[str]:
    problems = []
    used = _METRIC.findall(expr)
    if not used:
        problems.append("reads no hybrid_router_ metric")
    common: set[str] | None = None
    for name, selector in used:
        if name not in exported:
            problems.append(f"{name} is not exported")
            continue
        labels = exported[name] | TARGET_LABELS
        common = labels if common is None else common & labels
        problems += [f"{name} has no label {label!r}" for label in _MATCHER.findall(selector) if label not in labels]
    grouped = {label.strip() for group in _GROUPING.findall(expr) for label in group.split(",") if label.strip()}
    problems += [f"groups by {label!r}, which not every metric has" for label in grouped - (common or set())]
    shown = set(_LEGEND.findall(legend))
    kept = grouped if _GROUPING.search(expr) else (common or set())
    problems += [f"the legend shows {label!r}, which the query drops" for label in shown - kept]
    return problems


def test_every_dashboard_query_reads_real_metrics_and_labels(exported: dict[str, set[str]]) -> None:
    found = queries()
    assert len(found) >= 20
    problems = [
        f"{title} [{target['refId']}] {target['expr']}: {problem}"
        for title, target in found
        for problem in check_expression(target["expr"], target.get("legendFormat", ""), exported)
    ]
    variable = next(v for v in dashboard()["templating"]["list"] if v["name"] == "tenant")
    problems += [f"variable tenant: {p}" for p in check_expression(variable["definition"], "", exported)]
    assert re.fullmatch(r"label_values\((\w+), tenant\)", variable["definition"])
    assert not problems, "\n".join(problems)


def test_the_check_catches_a_wrong_name_or_label(exported: dict[str, set[str]]) -> None:
    assert check_expression("rate(hybrid_router_requests_total[5m])", "", exported) == []
    assert check_expression("rate(hybrid_router_request_total[5m])", "", exported) == [
        "hybrid_router_request_total is not exported"
    ]
    bad = 'sum by (tenant) (rate(hybrid_router_request_duration_seconds_count{model="x"}[5m]))'
    assert check_expression(bad, "{{target}}", exported) == [
        "hybrid_router_request_duration_seconds_count has no label 'model'",
        "groups by 'tenant', which not every metric has",
        "the legend shows 'target', which the query drops",
    ]


@pytest.mark.parametrize(
    ("topic", "pattern"),
    [
        ("requests by target", r"sum by \(target\) \(rate\(hybrid_router_requests_total"),
        ("requests by decision reason", r"sum by \(decided_by\) \(rate\(hybrid_router_requests_total"),
        (
            "latency p50",
            r"histogram_quantile\(0\.5, sum by \(target, le\) \(rate\(hybrid_router_request_duration_seconds_bucket",
        ),
        (
            "latency p95",
            r"histogram_quantile\(0\.95, sum by \(target, le\) \(rate\(hybrid_router_request_duration_seconds_bucket",
        ),
        (
            "ttft p50",
            r"histogram_quantile\(0\.5, sum by \(target, le\) \(rate\(hybrid_router_time_to_first_token_seconds_bucket",
        ),
        (
            "ttft p95",
            r"histogram_quantile\(0\.95, sum by \(target, le\) \(rate\(hybrid_router_time_to_first_token_seconds_bucket",
        ),
        ("edge queue depth", r"hybrid_router_backend_queue_depth"),
        ("tokens per second", r"rate\(hybrid_router_tokens_total"),
        ("cost", r"hybrid_router_cost_usd_total"),
        ("cost saved", r"hybrid_router_cost_saved_usd_total"),
        ("fallbacks", r"rate\(hybrid_router_fallbacks_total"),
        ("circuit state", r"hybrid_router_circuit_state"),
        ("budget remaining", r"hybrid_router_budget_remaining_usd"),
    ],
)
def test_the_dashboard_shows(topic: str, pattern: str) -> None:
    assert any(re.search(pattern, target["expr"]) for _, target in queries()), f"no panel shows {topic}"


def test_the_dashboard_is_grafana_10_with_a_fixed_uid_and_the_provisioned_datasource() -> None:
    board = dashboard()
    assert board["uid"] == "hybrid-router"
    assert board["schemaVersion"] >= 38  # Grafana 10
    provisioned = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = provisioned["datasources"][0]["uid"]
    variable = next(v for v in board["templating"]["list"] if v["type"] == "datasource")
    assert variable["query"] == "prometheus"
    assert variable["current"]["value"] == uid
    via_variable = {"type": "prometheus", "uid": "${" + variable["name"] + "}"}
    for panel in panels(board["panels"]):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == via_variable, panel["title"]
        assert all(t["datasource"] == via_variable for t in panel["targets"]), panel["title"]
    ids = [p["id"] for p in panels(board["panels"])]
    assert len(ids) == len(set(ids))


def test_grafana_provisioning_loads_the_dashboard(stack: dict[str, Any]) -> None:
    grafana = services(stack)["grafana"]
    assert in_container(grafana, "/etc/grafana/provisioning/datasources/prometheus.yml").is_file()
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "hybrid-router.yml").read_text())
    folder = providers["providers"][0]["options"]["path"]
    assert in_container(grafana, f"{folder}/hybrid-router.json").resolve() == DASHBOARD.resolve()
    home = environment(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert in_container(grafana, home).resolve() == DASHBOARD.resolve()
    assert provisioned_grafana_port(grafana) == "3000"


def provisioned_grafana_port(grafana: dict[str, Any]) -> str:
    port = grafana["ports"][0]
    return str(port["target"]) if isinstance(port, dict) else port.rsplit(":", 1)[1].split("/")[0]


# --- promtool, where installed


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is not installed: apt-get install -y prometheus (.ci/run does)", pytrace=False)
    return found


def test_promtool_accepts_prometheus_yml() -> None:
    result = subprocess.run([promtool(), "check", "config", str(PROMETHEUS_CONFIG)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    tool = promtool()
    # Grafana's variables, as Grafana would fill them in.
    variables = {"$__rate_interval": "1m", "$__range": "1h", "$tenant": ".*"}
    rules = []
    for n, (_, target) in enumerate(queries()):
        expr = target["expr"]
        for name, value in variables.items():
            expr = expr.replace(name, value)
        assert "$" not in expr, f"an unknown variable in {target['expr']}"
        rules.append({"record": f"dashboard:query_{n}", "expr": expr})
    file = tmp_path / "dashboard_rules.yml"
    file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([tool, "check", "rules", str(file)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# --- the demo's cloud emulator, over a real socket


@pytest.fixture(scope="module")
def cloud_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    port = free_port()
    args = [str(COMPOSE_DIR / "cloud_emulator.py"), "--port", str(port), "--api-key", DEMO_KEY]
    log = tmp_path_factory.mktemp("cloud-emulator") / "emulator.log"
    with running(args, port=port, ready_path="/healthz", log=log) as server:
        yield server


@pytest.mark.slow
def test_the_emulator_answers_the_openai_sdk(cloud_emulator: Server) -> None:
    with openai.OpenAI(base_url=cloud_emulator.url + "/v1", api_key=DEMO_KEY, max_retries=0, timeout=10) as client:
        reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi there"}])
        assert reply.choices[0].message.content == "Cloud emulator says: Hi there"
        assert reply.choices[0].finish_reason == "stop"
        assert reply.usage is not None and reply.usage.completion_tokens == 5

        chunks = list(
            client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "Hi there"}],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "Cloud emulator says: Hi there"
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
        assert chunks[-1].choices == [] and chunks[-1].usage is not None

        cut = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "a b c"}], max_tokens=2)
        assert (cut.choices[0].message.content, cut.choices[0].finish_reason) == ("Cloud emulator", "length")


@pytest.mark.slow
def test_the_emulator_refuses_a_wrong_key_in_openais_shape(cloud_emulator: Server) -> None:
    client = openai.OpenAI(base_url=cloud_emulator.url + "/v1", api_key="sk-wrong", max_retries=0, timeout=10)
    with client, pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Hi"}])
    assert caught.value.code == "invalid_api_key"


@pytest.mark.slow
def test_the_gateway_answers_through_the_emulator_with_the_demo_config(
    cloud_emulator: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """config.demo.yaml's cloud target, moved to the local emulator's port; the edge scripted."""
    demo = yaml.safe_load((COMPOSE_DIR / "config.demo.yaml").read_text())
    cloud = {**demo["targets"]["cloud"], "base_url": cloud_emulator.url + "/v1"}
    settings = compose_settings(COMPOSE_DIR / "config.demo.yaml", targets={"edge": {"type": "fake"}, "cloud": cloud})
    monkeypatch.setenv(cloud["api_key_env"], DEMO_KEY)
    body = {"model": "cloud", "messages": [{"role": "user", "content": "Hello cloud"}]}
    with TestClient(create_app(settings, registry=CollectorRegistry())) as client:
        plain = client.post("/v1/chat/completions", json=body)
        assert plain.status_code == 200, plain.text
        assert plain.headers["x-route-target"] == "cloud"
        assert plain.json()["choices"][0]["message"]["content"] == "Cloud emulator says: Hello cloud"

        streamed = client.post("/v1/chat/completions", json={**body, "stream": True})
        assert streamed.status_code == 200
        events = [line[6:] for line in streamed.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        pieces = [
            json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1] if json.loads(e)["choices"]
        ]
        assert "".join(pieces) == "Cloud emulator says: Hello cloud"

        metrics = client.get("/metrics").text
        assert (
            'hybrid_router_requests_total{decided_by="explicit",status="200",target="cloud",tenant="default"} 2.0'
            in metrics
        )
        assert "hybrid_router_cost_usd_total" in metrics


@pytest.mark.slow
def test_demo_traffic_sends_a_request(cloud_emulator: Server) -> None:
    script = COMPOSE_DIR / "demo_traffic.py"
    args = [
        sys.executable,
        str(script),
        "--base-url",
        cloud_emulator.url + "/v1",
        "--api-key",
        DEMO_KEY,
        "--count",
        "1",
    ]
    result = subprocess.run(args, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("200 ")


@pytest.mark.slow
def test_the_balancer_passes_streams_through_and_hides_metrics(cloud_emulator: Server, tmp_path: Path) -> None:
    """deploy/compose/nginx.conf for real, where nginx is installed, with two emulators standing in for the replicas."""
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").is_file() else None)
    if nginx is None:
        pytest.fail("nginx is not installed: apt-get install -y nginx-light (.ci/run does)", pytrace=False)
    second_port, port = free_port(), free_port()
    args = [str(COMPOSE_DIR / "cloud_emulator.py"), "--port", str(second_port), "--api-key", DEMO_KEY]
    conf = (COMPOSE_DIR / "nginx.conf").read_text()
    conf = conf.replace("gateway-1:8080", f"127.0.0.1:{cloud_emulator.port}")
    conf = conf.replace("gateway-2:8080", f"127.0.0.1:{second_port}")
    conf = conf.replace("listen 8080;", f"listen 127.0.0.1:{port};")
    # Somewhere writable for nginx's own files, whoever runs the tests.
    temp = "".join(
        f"{kind}_temp_path {tmp_path}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = conf.replace("http {", "http {\n  " + temp, 1)
    (tmp_path / "nginx.conf").write_text(conf)
    command = [nginx, "-p", str(tmp_path), "-e", "stderr", "-c", str(tmp_path / "nginx.conf"),
               "-g", f"daemon off; pid {tmp_path}/nginx.pid;"]  # fmt: skip
    with running(args, port=second_port, ready_path="/healthz", log=tmp_path / "second.log"):
        log = tmp_path / "nginx.log"
        with log.open("wb") as out:
            balancer = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_for(url + "/healthz", balancer, log)
            assert httpx.get(url + "/metrics").status_code == 404
            with openai.OpenAI(base_url=url + "/v1", api_key=DEMO_KEY, max_retries=0, timeout=10) as client:
                for _ in range(2):  # least_conn: one each, here
                    stream = client.chat.completions.create(
                        model="m", messages=[{"role": "user", "content": "through nginx"}], stream=True
                    )
                    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
                    assert text == "Cloud emulator says: through nginx"
        finally:
            balancer.terminate()
            balancer.wait(timeout=10)


def wait_for(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"exited with {process.returncode}:\n{log.read_text(errors='replace')}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {timeout}s")


# Series the live run below cannot produce: the scripted edge has no queue (the ONNX edge does), no budget or
# rate limit is hit, and every failed request is answered by its fallback.
NEEDS_MORE_THAN_THE_LIVE_RUN = (
    "hybrid_router_backend_queue_depth",
    "hybrid_router_backend_max_concurrency",
    "hybrid_router_budget_exhausted_total",
    "hybrid_router_rate_limited_total",
    "hybrid_router_upstream_errors_total",
)


@pytest.mark.slow
def test_a_real_prometheus_answers_every_dashboard_query(cloud_emulator: Server, tmp_path: Path) -> None:
    """prometheus.yml's sidecar job against a real gateway on the demo config (scripted edge), fed by the emulator.

    A third target on a dead port falls back to the cloud and opens its circuit; a day budget shows
    budget_remaining. Each query runs as Grafana would send it.
    """
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.fail(
            "the prometheus server is not installed: apt-get install -y prometheus (.ci/run does)", pytrace=False
        )
    gateway_port, prometheus_port = free_port(), free_port()
    demo = yaml.safe_load((COMPOSE_DIR / "config.demo.yaml").read_text())
    demo["targets"]["edge"] = {"type": "fake", "reply": "edge answer", "fallback": ["cloud"]}
    demo["targets"]["cloud"]["base_url"] = cloud_emulator.url + "/v1"
    demo["targets"]["flaky"] = {
        "type": "openai", "base_url": f"http://127.0.0.1:{free_port()}/v1", "model": "m", "fallback": ["cloud"],
        "retries": {"max_attempts": 1}, "circuit": {"failures": 2, "min_requests": 2, "open_s": 60},
    }  # fmt: skip
    demo["state"]["url"] = "memory://"
    demo["tenants"] = {"default": {"limits": {"usd_per_day": 5}}}
    (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(demo))
    scrape = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    sidecar_job = next(job for job in scrape["scrape_configs"] if job["job_name"] == "hybrid-router")
    sidecar_job["static_configs"][0]["targets"] = [f"127.0.0.1:{gateway_port}"]
    scrape = {"global": {"scrape_interval": "1s"}, "scrape_configs": [sidecar_job]}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(scrape))

    serve = ["-m", "service.cli", "serve", "--config", str(tmp_path / "gateway.yaml"), "--port", str(gateway_port)]
    env = {demo["targets"]["cloud"]["api_key_env"]: DEMO_KEY}
    with running(serve, port=gateway_port, ready_path="/readyz", log=tmp_path / "gateway.log", env=env) as gateway:
        command = [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                   f"--web.listen-address=127.0.0.1:{prometheus_port}"]  # fmt: skip
        log = tmp_path / "prometheus.log"
        with log.open("wb") as out:
            server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        try:
            api = f"http://127.0.0.1:{prometheus_port}"
            wait_for(api + "/-/ready", server, log)
            for _ in range(2):  # two bursts, a few scrapes apart: rate() needs the counters to move between them
                time.sleep(2.5)
                send_demo_traffic(gateway.url)
            # Scrapes run every second; on a busy machine they may lag: send more and ask again for up to 30 s.
            deadline = time.monotonic() + 30
            while True:
                time.sleep(2.5)
                empty = []
                for title, target in queries():
                    expr = target["expr"]
                    for variable, value in {"$__rate_interval": "30s", "$__range": "5m", "$tenant": ".*"}.items():
                        expr = expr.replace(variable, value)
                    answer = httpx.get(api + "/api/v1/query", params={"query": expr}).json()
                    assert answer["status"] == "success", f"{title}: {expr}: {answer}"
                    if not answer["data"]["result"] and not any(m in expr for m in NEEDS_MORE_THAN_THE_LIVE_RUN):
                        empty.append(f"{title} [{target['refId']}]: {expr}")
                label = {"match[]": "hybrid_router_requests_total"}
                tenants = httpx.get(api + "/api/v1/label/tenant/values", params=label).json()["data"]
                if (not empty and tenants == ["default"]) or time.monotonic() > deadline:
                    break
                send_demo_traffic(gateway.url)  # rate() needs the counters to move between scrapes it can see
            assert tenants == ["default"]
        finally:
            server.terminate()
            server.wait(timeout=15)
    assert not empty, "queries without data:\n" + "\n".join(empty)


def send_demo_traffic(gateway: str) -> None:
    """Edge and cloud, plain and streamed, and the dead target (connect error, then its circuit open)."""
    ask = [{"role": "user", "content": "What is the capital of France?"}]
    stream = {"stream": True, "stream_options": {"include_usage": True}}
    for body in ({}, stream, {"model": "cloud"}, {"model": "cloud", **stream}, {"model": "flaky"}, {"model": "flaky"}):
        answer = httpx.post(gateway + "/v1/chat/completions", json={"messages": ask, **body}, timeout=30)
        assert answer.status_code == 200, answer.text
