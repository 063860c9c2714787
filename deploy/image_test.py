"""``make image-test``: build the container image here with podman and try it from outside, as an operator would.

1. build ``deploy/Dockerfile`` (``MODEL_SOURCE=host``: the models ``make setup``
   built are copied in, so torch never enters the image build);
2. start it with a client key, read-only, every capability dropped;
3. wait for ``/readyz`` (the time to ready is reported);
4. a chat completion through the official ``openai`` SDK, answered by the edge
   model; a request without the key gets 401;
5. ``/metrics``, and the image's own ``HEALTHCHECK``;
6. SIGTERM in the middle of a streamed answer: the stream must finish or end
   cleanly, and the container must exit 0 with no traceback;
7. started without keys, it serves on loopback inside the container only;
8. ``docker-compose.yml`` validates (``docker-compose config``);
9. the Helm chart renders and every Kubernetes manifest validates
   (``deploy/check_manifests.py``).

podman runs as root with ``--runtime runc`` (crun fails on this machine's
cgroup setup) and explicit ulimits. No registry can be reached here, so
unless ``--base-image`` names one that is present, the base is made locally
with ``debootstrap`` (Debian bookworm, its Python 3.11) and kept as
``localhost/localbase:bookworm`` for the next run. pip inside the build uses
this machine's package sources (find-links and CA bundle, passed in).

A step that cannot run fails with the reason; nothing is skipped silently.

    python deploy/image_test.py [--tag hybrid-router:test] [--base-image IMAGE] [--keep] [--build-only]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_models.catalog import default_models_dir  # noqa: E402

# crun fails on this machine's cgroup setup; runc works. Explicit ulimits: podman's defaults exceed the host's.
RUNTIME = ["--runtime", "runc"]
ULIMITS = ["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768"]
LOCAL_BASE = "localhost/localbase:bookworm"
OFFICIAL_BASE = "docker.io/library/python:3.11-slim"
# The folders the default config serves from (the edge model and the classifier's encoder).
MODELS = ("smollm2-135m-instruct-int8", "all-minilm-l6-v2")
KEY = "sk-image-test"


class Failed(Exception):
    """A step failed; the message says which and why."""


def step(name: str) -> None:
    print(f"== {name}", flush=True)


def podman(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise Failed(f"podman {' '.join(args[:3])} … failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    return result


def check_podman() -> None:
    if shutil.which("podman") is None:
        raise Failed("podman is not installed: apt-get install podman runc (README, 'Deploy')")
    if shutil.which("runc") is None:
        raise Failed("runc is not installed: apt-get install runc (crun fails on this machine's cgroups)")
    info = podman("info", "--format", "{{.Host.OCIRuntime.Name}}", check=False)
    if info.returncode != 0:
        raise Failed(f"podman cannot run here: {info.stderr.strip()[-1000:]}")


def base_image(chosen: str | None) -> str:
    """The image to build on: the one asked for, the official slim one if present, else a local debootstrap."""
    if chosen:
        if podman("image", "exists", chosen, check=False).returncode != 0:
            raise Failed(f"base image {chosen} is not present (no registry can be reached to pull it)")
        return chosen
    for candidate in (OFFICIAL_BASE, LOCAL_BASE):
        if podman("image", "exists", candidate, check=False).returncode == 0:
            return candidate
    if shutil.which("debootstrap") is None:
        raise Failed("no base image and no debootstrap to make one: apt-get install debootstrap")
    if os.geteuid() != 0:
        raise Failed("making the base image with debootstrap needs root")
    step(f"making {LOCAL_BASE} with debootstrap (about a minute; kept for the next run)")
    with tempfile.TemporaryDirectory(prefix="hr-rootfs-") as rootfs:
        subprocess.run(
            ["debootstrap", "--variant=minbase", "--include=python3,python3-venv,python3-pip", "bookworm", rootfs],
            check=True, capture_output=True, timeout=1200,
        )  # fmt: skip
        # The packages debootstrap downloaded (about 100 MB) are installed by now: not part of the image.
        for deb in Path(rootfs, "var/cache/apt/archives").glob("*.deb"):
            deb.unlink()
        tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(["podman", "import", "-", LOCAL_BASE], stdin=tar.stdout, check=True, capture_output=True)
        tar.wait()
    return LOCAL_BASE


def stage_models() -> None:
    """Copy the host-built models into the build context (``.image-models``, ignored by git)."""
    source = default_models_dir()
    missing = [name for name in MODELS if not (source / name).is_dir()]
    if missing:
        raise Failed(f"models {missing} are not built in {source}: run `make setup` (hybrid-router edge build)")
    target = ROOT / ".image-models"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir()
    for name in MODELS:
        shutil.copytree(source / name, target / name)


def pip_sources() -> list[str]:
    """This machine's package sources for pip inside the build: find-links, extra indexes, CA bundle."""
    args: list[str] = []
    links = os.environ.get("PIP_FIND_LINKS") or _pip_config("find-links")
    if links and Path(links).is_dir():
        args += ["-v", f"{links}:{links}:ro", "--build-arg", f"PIP_FIND_LINKS={links}"]
    extra = _pip_config("extra-index-url")
    local = [url for url in (extra or "").split() if url.startswith("file://")]
    for url in local:
        folder = Path(url.removeprefix("file://")).parent
        if folder.is_dir():
            args += ["-v", f"{folder}:{folder}:ro"]
    if local:
        args += ["--build-arg", f"PIP_EXTRA_INDEX_URL={' '.join(local)}"]
    cert = os.environ.get("PIP_CERT") or _pip_config("cert") or "/etc/ssl/certs/ca-certificates.crt"
    if Path(cert).is_file():
        # A proxy in the way may sign with its own CA: the build trusts what this machine trusts.
        args += ["-v", f"{cert}:/etc/ssl/certs/host-ca.crt:ro", "--build-arg", "PIP_CERT=/etc/ssl/certs/host-ca.crt"]
    return args


def _pip_config(key: str) -> str | None:
    for line in _pip_config_lines():
        name, _, value = line.partition("=")
        if name.split(".", 1)[-1] == key:
            return value.strip().strip("'\"")
    return None


@functools.cache
def _pip_config_lines() -> tuple[str, ...]:
    result = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
    return tuple(result.stdout.splitlines())


def build(tag: str, base: str, model_source: str = "host") -> float:
    start = time.monotonic()
    podman(
        "build", *RUNTIME, *ULIMITS, "--network", "host", "--format", "docker", "-f", "deploy/Dockerfile",
        "--build-arg", f"BASE_IMAGE={base}", "--build-arg", f"MODEL_SOURCE={model_source}", *pip_sources(),
        "-t", tag, str(ROOT), timeout=3600,
    )  # fmt: skip
    return time.monotonic() - start


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def container(tag: str, name: str, port: int, env: dict[str, str]) -> Iterator[str]:
    podman("rm", "-f", name, check=False)
    flags = [f"-e={key}={value}" for key, value in env.items()]
    podman(
        "run", "-d", *RUNTIME, *ULIMITS, "--name", name, "--read-only", "--tmpfs", "/tmp",
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "-p", f"127.0.0.1:{port}:8080", *flags, tag,
    )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        podman("rm", "-f", "-t", "5", name, check=False)


def wait_ready(url: str, name: str, timeout_s: float = 180) -> float:
    import httpx

    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return time.monotonic() - start
        except httpx.TransportError:
            pass
        state = podman("inspect", "-f", "{{.State.Status}}", name, check=False).stdout.strip()
        if state not in ("running", "created", "configured"):
            raise Failed(f"the container stopped ({state}):\n{logs(name)}")
        time.sleep(0.25)
    raise Failed(f"not ready within {timeout_s:.0f} s:\n{logs(name)}")


def logs(name: str) -> str:
    result = podman("logs", name, check=False)
    return (result.stdout + result.stderr)[-4000:]


def check_chat(url: str) -> dict[str, Any]:
    import httpx
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=120)
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=24
    )
    answer = raw.parse()
    target = raw.headers.get("x-route-target")
    text = answer.choices[0].message.content or ""
    if target != "edge" or not text.strip() or answer.model != "smollm2-135m-instruct":
        raise Failed(f"expected the edge model to answer, got target={target} model={answer.model} text={text!r}")
    try:
        openai.OpenAI(base_url=url + "/v1", api_key="sk-wrong", max_retries=0).models.list()
    except openai.AuthenticationError:
        pass
    else:
        raise Failed("a request with a wrong key was served")
    unkeyed = httpx.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    if unkeyed.status_code != 401 or unkeyed.json().get("error", {}).get("code") != "invalid_api_key":
        raise Failed(f"a request without a key got {unkeyed.status_code}: {unkeyed.text[:300]}")
    return {"answer": text, "usage": answer.usage.model_dump() if answer.usage else None}


def check_metrics(url: str) -> None:
    import httpx

    text = httpx.get(url + "/metrics", timeout=10).text
    for name in ("hybrid_router_requests_total", "hybrid_router_backend_queue_depth", "hybrid_router_target_ready"):
        if name not in text:
            raise Failed(f"/metrics lacks {name}")
    if 'target="edge"' not in text:
        raise Failed("/metrics shows no request served by the edge target")


def check_healthcheck(name: str) -> None:
    # podman runs HEALTHCHECK from systemd timers; without systemd, ask it directly.
    result = podman("healthcheck", "run", name, check=False)
    if result.returncode != 0:
        raise Failed(f"the image's HEALTHCHECK failed: {result.stdout}{result.stderr}")


def check_sigterm_during_stream(url: str, name: str) -> dict[str, Any]:
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=120)
    first = threading.Event()
    outcome: dict[str, Any] = {"chunks": 0, "finish_reason": None, "error": None}

    def read() -> None:
        try:
            stream = client.chat.completions.create(
                model="edge", stream=True, max_tokens=160,
                messages=[{"role": "user", "content": "Write a long story about a lighthouse keeper."}],
            )  # fmt: skip
            for chunk in stream:
                outcome["chunks"] += 1
                if chunk.choices and chunk.choices[0].delta.content:
                    first.set()
                if chunk.choices and chunk.choices[0].finish_reason:
                    outcome["finish_reason"] = chunk.choices[0].finish_reason
        except Exception as exc:  # noqa: BLE001 - any failure is the finding, reported below
            outcome["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            first.set()

    reader = threading.Thread(target=read)
    reader.start()
    if not first.wait(120):
        raise Failed("no streamed token within 120 s")
    sent = time.monotonic()
    podman("kill", "--signal", "TERM", name)
    reader.join(60)
    code = podman("wait", name, timeout=90).stdout.strip()
    outcome["stopped_after_s"] = round(time.monotonic() - sent, 2)
    outcome["exit_code"] = int(code) if code.lstrip("-").isdigit() else code
    text = logs(name)
    if outcome["error"] or outcome["finish_reason"] not in ("stop", "length"):
        raise Failed(f"the stream cut by SIGTERM did not end cleanly: {outcome}\n{text}")
    if outcome["exit_code"] != 0 or "Traceback" in text:
        raise Failed(f"the container did not exit cleanly after SIGTERM: {outcome}\n{text}")
    return outcome


def check_loopback_without_keys(tag: str) -> None:
    import httpx

    port = free_port()
    name = "hybrid-router-image-test-nokeys"
    with container(tag, name, port, {}) as url:
        inside = (
            "import urllib.request, time\n"
            "for _ in range(240):\n"
            "    try:\n"
            "        urllib.request.urlopen('http://127.0.0.1:8080/readyz', timeout=2); break\n"
            "    except Exception: time.sleep(0.5)\n"
            "else: raise SystemExit(1)\n"
        )
        if podman("exec", name, "python", "-c", inside, check=False, timeout=180).returncode != 0:
            raise Failed(f"without keys the gateway did not serve inside its container:\n{logs(name)}")
        try:
            answer = httpx.get(url + "/readyz", timeout=3)
        except httpx.TransportError:
            pass  # refused or reset: nothing listens on the container's outside address
        else:
            raise Failed(f"without keys the gateway answered from outside its container ({answer.status_code})")
        if "serving on 127.0.0.1 only" not in logs(name):
            raise Failed("without keys the gateway did not say it serves on loopback only")


def check_compose() -> None:
    binary = shutil.which("docker-compose")
    if binary is None:
        raise Failed("docker-compose is not installed: apt-get install docker-compose (it validates offline)")
    env = {**os.environ, "HYBRID_ROUTER_API_KEYS": "sk-validate", "OPENAI_API_KEY": ""}
    for profiles in ([], ["demo"], ["replicas"]):
        args = [binary, "-f", str(ROOT / "docker-compose.yml")]
        for profile in profiles:
            args += ["--profile", profile]
        result = subprocess.run([*args, "config", "-q"], capture_output=True, text=True, env=env, cwd=ROOT)
        if result.returncode != 0:
            raise Failed(f"docker-compose.yml (profiles {profiles}) does not validate: {result.stderr.strip()}")


def check_manifests() -> None:
    script = ROOT / "deploy" / "check_manifests.py"
    if not script.is_file():
        raise Failed(f"{script} is missing")
    result = subprocess.run([sys.executable, str(script), "-q"], capture_output=True, text=True, cwd=ROOT)
    print(result.stdout.strip())
    if result.returncode != 0:
        raise Failed(f"the Kubernetes manifests or the Helm chart do not validate:\n{result.stdout}{result.stderr}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tag", default="localhost/hybrid-router:test")
    parser.add_argument("--base-image", help=f"default: {OFFICIAL_BASE} if present, else {LOCAL_BASE}")
    parser.add_argument("--keep", action="store_true", help="keep the image afterwards")
    parser.add_argument("--build-only", action="store_true", help="build and keep the image; test nothing")
    parser.add_argument(
        "--model-source", choices=["host", "build"], default="host",
        help="host: copy the models `make setup` built (default); build: build them inside the image (torch there)",
    )  # fmt: skip
    args = parser.parse_args()
    args.keep = args.keep or args.build_only
    report: dict[str, Any] = {}
    try:
        step("podman")
        check_podman()
        base = base_image(args.base_image)
        report["base_image"] = base
        step(f"build on {base}")
        if args.model_source == "host":
            stage_models()
        report["build_s"] = round(build(args.tag, base, args.model_source), 1)
        size = podman("image", "inspect", "--format", "{{.Size}}", args.tag).stdout.strip()
        report["image_mb"] = round(int(size) / 1e6)
        if args.build_only:
            print(f"built {args.tag}: {report['image_mb']} MB in {report['build_s']} s")
            return 0
        name = "hybrid-router-image-test"
        port = free_port()
        with container(args.tag, name, port, {"HYBRID_ROUTER_API_KEYS": KEY}) as url:
            step("ready")
            report["ready_s"] = round(wait_ready(url, name), 2)
            step("chat through the openai SDK; 401 without the key")
            report["chat"] = check_chat(url)
            step("metrics and HEALTHCHECK")
            check_metrics(url)
            check_healthcheck(name)
            stats = podman("stats", "--no-stream", "--format", "{{.MemUsage}}", name, check=False).stdout.strip()
            report["memory"] = stats
            step("SIGTERM during a streamed answer")
            report["sigterm"] = check_sigterm_during_stream(url, name)
        step("no keys: loopback only")
        check_loopback_without_keys(args.tag)
        step("docker-compose.yml")
        check_compose()
        step("Helm chart and Kubernetes manifests")
        check_manifests()
    except (Failed, subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        print(json.dumps(report, indent=2))
        print(f"image-test FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(ROOT / ".image-models", ignore_errors=True)
        if not args.keep:
            podman("rmi", "-f", args.tag, check=False)
    print(json.dumps(report, indent=2))
    print(
        f"image-test passed: image {report['image_mb']} MB, built in {report['build_s']} s, "
        f"ready {report['ready_s']} s after start, memory {report['memory']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
