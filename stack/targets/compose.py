"""The single-box target: Docker Compose on a real engine.

Rolling updates: Compose recreates all of a service's containers at once, so
each version of an API is its own Compose service (`<api>-<version>`). The
versions carry identical Traefik labels, so Traefik balances over both while
the new one grows; old containers are stopped only once enough new ones are
healthy, honouring `max_surge` / `max_unavailable`. Every `docker compose up`
names its services and their current counts (`--scale`), so it never resets
what the autoscaler or `stack scale` set.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests

from serving.supervisor import port_is_free
from stack.autoscale.service import DECISIONS_FILE, MANUAL_FILE, manual_apis
from stack.errors import StackError
from stack.local.state import write_json_atomic
from stack.plan.render import (
    AUTOSCALER_STATE_DIR,
    api_version,
    autoscaler_image,
    control_plane_digest,
    plan_compose,
    project_digest,
    service_name,
)
from stack.spec import Api, LoadedSpec
from stack.targets import build

Progress = Callable[[str], None]
PLAN_DIR = ".stack/plan/compose"
READY_TIMEOUT = 600.0
PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"


@dataclass(frozen=True)
class Container:
    id: str
    name: str
    service: str
    api: str
    version: str
    state: str  # running, exited, restarting, created, ...
    health: str  # healthy, unhealthy, starting, or "" without a health check
    exit_code: int

    @property
    def ready(self) -> bool:
        return self.state == "running" and self.health == "healthy"

    @property
    def failed(self) -> bool:
        return self.state in ("exited", "dead") or self.state == "restarting" or self.health == "unhealthy"


def docker(*args: str, check: bool = True, capture: bool = True, timeout: float | None = None) -> str:
    try:
        result = subprocess.run(["docker", *args], capture_output=capture, text=True, timeout=timeout)
    except FileNotFoundError:
        raise StackError(NO_DOCKER) from None
    if check and result.returncode != 0:
        raise StackError(f"`docker {' '.join(args[:4])} ...` failed:\n{(result.stderr or result.stdout).strip()}")
    return result.stdout if capture else ""


NO_DOCKER = (
    "Docker is not installed (no `docker` command). Install Docker Engine with the Compose v2 plugin, "
    "or run the stack without containers: `stack up --local`."
)


class ComposeTarget:
    def __init__(self, loaded: LoadedSpec) -> None:
        self.loaded = loaded
        self.project = loaded.spec.project
        self.plan_dir = loaded.root / PLAN_DIR
        self.state_dir = loaded.root / AUTOSCALER_STATE_DIR

    # -- checks ---------------------------------------------------------------------------

    def preflight(self) -> None:
        if shutil.which("docker") is None:
            raise StackError(NO_DOCKER)
        info = subprocess.run(["docker", "info", "--format", "{{json .Runtimes}}"], capture_output=True, text=True)
        if info.returncode != 0:
            raise StackError(
                "the Docker engine is not reachable: "
                f"{(info.stderr or info.stdout).strip().splitlines()[-1] if (info.stderr or info.stdout) else ''}. "
                "Start it (`sudo systemctl start docker`), check that you may use /var/run/docker.sock, "
                "or use `stack up --local`."
            )
        if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0:
            raise StackError(
                "Docker Compose v2 is missing: install the docker-compose-plugin package "
                "(`docker compose version` must work), or use `stack up --local`."
            )
        gpu_apis = [a.name for a in self.loaded.spec.apis if a.compute.gpu]
        if gpu_apis and "nvidia" not in info.stdout:
            raise StackError(
                f"API(s) {', '.join(gpu_apis)} ask for GPUs but Docker has no NVIDIA runtime: install the NVIDIA "
                "Container Toolkit and run `sudo nvidia-ctk runtime configure --runtime=docker` "
                "(see compose/README.md)."
            )

    # -- containers ----------------------------------------------------------------------------

    def containers(self) -> list[Container]:
        ids = docker("ps", "-aq", "--filter", f"label={PROJECT_LABEL}={self.project}").split()
        if not ids:
            return []
        found = []
        for item in json.loads(docker("inspect", *ids)):
            labels = item["Config"]["Labels"] or {}
            if "stack.api" not in labels:
                continue
            health = (item["State"].get("Health") or {}).get("Status", "")
            found.append(
                Container(
                    item["Id"][:12],
                    item["Name"].lstrip("/"),
                    labels.get(SERVICE_LABEL, ""),
                    labels["stack.api"],
                    labels.get("stack.version", ""),
                    item["State"]["Status"],
                    health,
                    item["State"].get("ExitCode", 0),
                )
            )
        return sorted(found, key=lambda c: c.name)

    def _compose(self, *args: str, capture: bool = True, timeout: float | None = None) -> str:
        return docker(
            "compose",
            "-p",
            self.project,
            "-f",
            str(self.plan_dir / "compose.yaml"),
            *args,
            capture=capture,
            timeout=timeout,
        )

    # -- up -----------------------------------------------------------------------------------------

    def up(self, progress: Progress, host_gpus: int | None = None) -> None:
        self.preflight()
        plan = plan_compose(self.loaded, self.plan_dir, host_gpus=host_gpus)
        plan.write(self.plan_dir)
        digest = project_digest(self.loaded.root, exclude=self.plan_dir)
        versions = {api.name: api_version(api, digest) for api in self.loaded.spec.apis}
        for api in self.loaded.spec.apis:
            self._build(api, versions[api.name], plan.files.get(f"{api.name}.Dockerfile", ""), progress)
        self._check_gateway_port()
        progress("starting Traefik and Prometheus")
        self._compose("up", "-d", "traefik", "prometheus")
        for api in self.loaded.spec.apis:
            self._roll(api, versions[api.name], progress)
            self._wait_routed(api, progress)
        self._start_autoscaler(plan.files.get("autoscaler.Dockerfile"), progress)

    def _wait_routed(self, api: Api, progress: Progress) -> None:
        """Return only once a request through the gateway reaches the API: Traefik takes up to
        a second after a replica turns healthy to route to it, and `stack up` promises a live URL."""
        url = f"http://127.0.0.1:{self.loaded.spec.gateway.port}{api.endpoint.rstrip('/')}/readyz"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if requests.get(url, timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        progress(f"{api.name}: warning: the gateway does not reach it yet ({url})")

    def _start_autoscaler(self, dockerfile: str | None, progress: Progress) -> None:
        """Build and (re)start the autoscaler service; `stack up` hands every API back to it."""
        (self.state_dir / MANUAL_FILE).unlink(missing_ok=True)
        if dockerfile is None:  # no API is autoscaled (any more)
            ids = docker(
                "ps",
                "-aq",
                "--filter",
                f"label={PROJECT_LABEL}={self.project}",
                "--filter",
                "label=stack.role=autoscaler",
            ).split()
            if ids:
                docker("rm", "-f", *ids)
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        image = autoscaler_image()
        code = control_plane_digest()[:16]
        if build.image_label(image, "stack.code") != code:  # missing, or built from other code
            wheelhouse = self.loaded.spec.build.wheelhouse
            context = build.assemble_autoscaler(self.loaded.root, dockerfile, wheelhouse, progress)
            build.build_image(context, image, progress, labels={"stack.code": code})
        progress("starting the autoscaler")
        self._compose("up", "-d", "--no-deps", "autoscaler")

    def _build(self, api: Api, version: str, dockerfile: str, progress: Progress) -> None:
        if api.predictor.image is not None:
            return
        image = f"{self.project}-{api.name}:{version}"
        if build.image_exists(image):
            progress(f"{api.name}: image {image} is up to date")
            return
        context = build.assemble(
            self.loaded.root,
            service_name(api, version),
            dockerfile,
            self.loaded.requirements_file(api),
            self.loaded.spec.build.wheelhouse,
            progress,
        )
        build.build_image(context, image, progress)

    def _check_gateway_port(self) -> None:
        port = self.loaded.spec.gateway.port
        ours = docker(
            "ps", "-q", "--filter", f"label={PROJECT_LABEL}={self.project}", "--filter", "label=stack.role=gateway"
        ).split()
        if not ours and not port_is_free("0.0.0.0", port):  # our own Traefik holding it is fine
            raise StackError(
                f"gateway port {port} is already in use; stop what uses it "
                f"(`ss -ltnp 'sport = :{port}'`) or set gateway.port in stack.yaml"
            )

    def _services(self, api: Api, version: str) -> list[str]:
        base = service_name(api, version)
        if not api.compute.gpu:
            return [base]
        return [f"{base}-gpu{slot}" for slot in range(api.autoscaling.max_replicas)]

    def _roll(self, api: Api, version: str, progress: Progress) -> None:
        """Bring API to `version` with max_surge / max_unavailable; untouched when already there."""
        mine = [c for c in self.containers() if c.api == api.name and c.state != "exited"]
        old = [c for c in mine if c.version != version]
        current = [c for c in mine if c.version == version]
        # Keep the count the autoscaler or `stack scale` chose; a first start uses init_replicas.
        desired = len(old) if old else (len(current) or api.autoscaling.initial)
        desired = min(max(desired, api.autoscaling.min_replicas), api.autoscaling.max_replicas)
        if not old:
            self._scale_to(api, version, desired)
            self._wait(api, version, desired, progress)
            return
        progress(f"{api.name}: rolling update to {version} ({len(old)} old replica(s))")
        surge, unavailable = api.update.resolve(desired)
        count = len(current)
        while count < desired or old:
            if count < desired:
                count = min(desired, count + max(surge, 1))
                self._scale_to(api, version, count)
                self._wait(api, version, count, progress)
            # Retire old replicas while the healthy ones stay at or above desired - unavailable.
            healthy = sum(1 for c in self.containers() if c.api == api.name and c.ready)
            removable = max(healthy - (desired - unavailable), 0) if count >= desired else max(surge, 1)
            for container in old[: max(removable, 1 if count >= desired else 0)]:
                progress(f"{api.name}: stopping old replica {container.name}")
                docker("stop", "-t", str(int(_stop_timeout(api))), container.id)
                docker("rm", container.id)
                old.remove(container)
        progress(f"{api.name}: rolling update done")

    def _scale_to(self, api: Api, version: str, count: int) -> None:
        services = self._services(api, version)
        scales = (
            [f"{s}={count}" for s in services]
            if len(services) == 1
            else [f"{s}={1 if i < count else 0}" for i, s in enumerate(services)]
        )
        args = [arg for scale in scales for arg in ("--scale", scale)]
        self._compose("up", "-d", "--no-recreate", *args, *services)

    def _wait(self, api: Api, version: str, count: int, progress: Progress) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        last = ""
        while True:
            mine = [c for c in self.containers() if c.api == api.name and c.version == version]
            ready = [c for c in mine if c.ready]
            line = f"{api.name}: {len(ready)}/{count} replicas ready"
            if line != last:
                progress(line)
                last = line
            if len(ready) >= count:
                return
            broken = [c for c in mine if c.failed]
            if broken:
                c = broken[0]
                logs = docker("logs", "--tail", "20", c.id, check=False)
                logs += subprocess.run(["docker", "logs", "--tail", "20", c.id], capture_output=True, text=True).stderr
                raise StackError(
                    f"replica {c.name} of API {api.name} failed to start "
                    f"(state {c.state}, exit code {c.exit_code}); its last log lines:\n{logs.strip()}"
                )
            if time.monotonic() > deadline:
                raise StackError(f"{line} after {READY_TIMEOUT:.0f}s; see `stack logs {api.name}`")
            time.sleep(1)

    # -- status, logs, scale, down -----------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        containers = self.containers()
        digest = project_digest(self.loaded.root, exclude=self.plan_dir)
        decisions = self._decisions()
        manual = manual_apis(self.state_dir)
        apis = []
        for api in self.loaded.spec.apis:
            version = api_version(api, digest)
            mine = [c for c in containers if c.api == api.name]
            live = [c for c in mine if c.state != "exited" or c.exit_code != 0]
            current = [c for c in live if c.version == version]
            ready = [c for c in mine if c.ready]
            if any(c.failed for c in current) and not ready:
                state = "error"
            elif any(c.version != version and c.state == "running" for c in mine):
                state = "updating"
            elif current and len([c for c in current if c.ready]) >= len(current):
                state = "live"
            else:
                state = "starting" if current else "stopped"
            apis.append(
                {
                    "name": api.name,
                    "status": state,
                    "ready": len(ready),
                    "desired": len(current),
                    "endpoint": api.endpoint,
                    "version": version,
                    "replicas": [c.__dict__ for c in mine],
                    "autoscaled": api.autoscaled and api.name not in manual,
                    "autoscaler": decisions.get(api.name),
                    **self._traffic(api.name),
                }
            )
        return {"project": self.project, "gateway_port": self.loaded.spec.gateway.port, "apis": apis}

    def _decisions(self) -> dict[str, Any]:
        """The autoscaler's last decisions per API, as it saved them in the shared state directory."""
        try:
            return json.loads((self.state_dir / DECISIONS_FILE).read_text())
        except (OSError, ValueError):
            return {}

    def _traffic(self, api: str) -> dict[str, Any]:
        """Request rate, latency quantiles and status classes over the last minutes, from Prometheus."""
        url = f"http://127.0.0.1:{self.loaded.spec.prometheus.port}/api/v1/query"
        selector = f'api="{api}"'
        queries = {
            "requests_per_second": f"sum(rate(predictor_requests_total{{{selector}}}[1m]))",
            "p50_ms": f"1000 * histogram_quantile(0.5, sum by (le) "
            f"(rate(predictor_request_duration_seconds_bucket{{{selector}}}[1m])))",
            "p99_ms": f"1000 * histogram_quantile(0.99, sum by (le) "
            f"(rate(predictor_request_duration_seconds_bucket{{{selector}}}[1m])))",
        }
        out: dict[str, Any] = {}
        try:
            for key, query in queries.items():
                result = requests.get(url, params={"query": query}, timeout=3).json()["data"]["result"]
                value = float(result[0]["value"][1]) if result else None
                out[key] = None if value is None or value != value else round(value, 2)
            by_code = requests.get(
                url,
                params={"query": f"sum by (code) (increase(predictor_requests_total{{{selector}}}[5m]))"},
                timeout=3,
            ).json()
            classes = {"2xx": 0.0, "4xx": 0.0, "5xx": 0.0}
            for item in by_code["data"]["result"]:
                key = f"{item['metric'].get('code', '0')[0]}xx"
                if key in classes:
                    classes[key] += float(item["value"][1])
            out.update({k: round(v) for k, v in classes.items()})
        except (requests.RequestException, KeyError, ValueError):
            out["traffic_error"] = "Prometheus not reachable"
        return out

    def logs(self, api: str, follow: bool) -> None:
        services = sorted({c.service for c in self.containers() if c.api == api})
        if not services:
            raise StackError(f"API {api!r} has no containers; is the stack up?")
        args = ["logs", "--timestamps", *(["-f"] if follow else []), *services]
        subprocess.run(["docker", "compose", "-p", self.project, "-f", str(self.plan_dir / "compose.yaml"), *args])

    def scale(self, api_name: str, replicas: int, force: bool, progress: Progress) -> None:
        api = self.loaded.spec.api(api_name)
        if api.autoscaled and not force:
            raise StackError(
                f"the autoscaler owns {api.name} (min_replicas {api.autoscaling.min_replicas} != "
                f"max_replicas {api.autoscaling.max_replicas}); add --force to set it by hand"
            )
        if api.autoscaled:
            # Tell the autoscaler to leave this API alone until the next `stack up`.
            self.state_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.state_dir / MANUAL_FILE, sorted(manual_apis(self.state_dir) | {api.name}))
        version = api_version(api, project_digest(self.loaded.root, exclude=self.plan_dir))
        self._scale_to(api, version, replicas)
        self._wait(api, version, replicas, progress)

    def down(self, volumes: bool) -> None:
        self.preflight()
        if not (self.plan_dir / "compose.yaml").exists():
            plan_compose(self.loaded, self.plan_dir).write(self.plan_dir)
        self._compose("down", "--remove-orphans", *(["--volumes"] if volumes else []), capture=False)


def _stop_timeout(api: Api) -> float:
    return api.predictor.drain_delay + api.predictor.grace_period + 5
