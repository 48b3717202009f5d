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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from serving.supervisor import port_is_free
from stack import routes
from stack.atomic import write_json_atomic
from stack.autoscale.scaler import Scaler
from stack.autoscale.service import DECISIONS_FILE, MANUAL_FILE, manual_apis
from stack.canary import STATE_FILE as CANARY_FILE
from stack.errors import NotRunning, StackError
from stack.plan.render import (
    AUTOSCALER_STATE_DIR,
    CONTROL_DIR,
    api_version,
    autoscaler_image,
    control_plane_digest,
    detect_gpus,
    plan_compose,
    project_digest,
    project_files,
    service_name,
)
from stack.plan.serving import extra_requirements
from stack.spec import Api, LoadedSpec
from stack.splits import change, clear_overrides, splitter_status, splitters_of
from stack.status import ApiStatus, ReplicaStatus, StackStatus, Traffic
from stack.targets import build
from stack.targets.base import check_scale, refuse_nomad_autoscaler
from stack.targets.compose.desired import DESIRED_FILE, Desired, read_desired, write_desired
from stack.targets.compose.logs import follow_container_logs
from stack.targets.gateway import check_routed, readiness_url, wait_until_routed
from stack.targets.rollout import Fleet, next_step
from stack.traffic import prometheus_traffic

Progress = Callable[[str], None]
PLAN_DIR = ".stack/plan/compose"
DEPLOYED_FILE = ".stack/compose/deployed.json"  # API -> the version `stack up` last rolled it to
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
    name = "compose"

    def __init__(self, loaded: LoadedSpec, host_gpus: int | None = None) -> None:
        self.loaded = loaded
        self.host_gpus = host_gpus  # None: ask nvidia-smi when planning
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

    def up(self, progress: Progress) -> StackStatus:
        refuse_nomad_autoscaler(self.loaded, "compose")
        self.preflight()
        host_gpus = self.host_gpus if self.host_gpus is not None else detect_gpus()
        plan = plan_compose(self.loaded, self.plan_dir, host_gpus=host_gpus)
        plan.write(self.plan_dir)
        digest = project_digest(self.loaded)
        versions = {api.name: api_version(api, digest) for api in self.loaded.spec.apis}
        for api in self.loaded.spec.apis:
            self._build(api, versions[api.name], plan.files.get(f"{api.name}.Dockerfile", ""), progress)
        self._check_gateway_port()
        self._prepare_control_dir()
        self._build_controller(plan.files["autoscaler.Dockerfile"], progress)
        progress("starting Traefik, Prometheus and the controller")
        # `stack up` hands every API back to the autoscaler, and re-applies stack.yaml's weights.
        (self.state_dir / MANUAL_FILE).unlink(missing_ok=True)
        clear_overrides(self.state_dir)
        self._compose("up", "-d", "traefik", "prometheus", "autoscaler")
        for api in self.loaded.spec.apis:
            self._roll(api, versions[api.name], progress)
            self._wait_routed(api, progress)
        return self.status()

    def _prepare_control_dir(self) -> None:
        """The controller's files exist before anything reads them (Docker would create root-owned dirs)."""
        control = self.loaded.root / CONTROL_DIR
        for sub in ("routes", "targets"):
            (control / sub).mkdir(parents=True, exist_ok=True)
            (control / sub).chmod(0o755)
        if not (control / "routes" / routes.ROUTES_FILE).exists():
            routes.write(control / "routes", routes.render([]))
        if not (control / "targets" / "replicas.json").exists():
            write_json_atomic(control / "targets" / "replicas.json", [])
        self.state_dir.mkdir(parents=True, exist_ok=True)

    def _wait_routed(self, api: Api, progress: Progress) -> None:
        """Return only once a request through the gateway reaches the API: `stack up` promises a live URL."""
        url = readiness_url(self.loaded.spec.gateway.port, api.endpoint)
        if not wait_until_routed(url, timeout=30):
            progress(f"{api.name}: warning: the gateway does not reach it yet ({url})")

    def _build_controller(self, dockerfile: str, progress: Progress) -> None:
        """The controller/autoscaler image: one per machine, rebuilt when our code changed."""
        image = autoscaler_image()
        code = control_plane_digest()[:16]
        if build.image_label(image, "stack.code") == code:
            return
        spec = self.loaded.spec.build
        context = build.assemble_autoscaler(self.loaded.root, dockerfile, spec.base_image, spec.wheelhouse, progress)
        build.build_image(context, image, progress, labels={"stack.code": code})

    def _build(self, api: Api, version: str, dockerfile: str, progress: Progress) -> None:
        if api.predictor.image is not None:
            return
        image = f"{self.project}-{api.name}:{version}"
        if build.image_exists(image):
            progress(f"{api.name}: image {image} is up to date")
            return
        context = build.assemble(
            project_files(self.loaded),
            service_name(api, version),
            dockerfile,
            self.loaded.requirements_file(api),
            self.loaded.spec.build.base_image,
            self.loaded.spec.build.wheelhouse,
            progress,
            extra=extra_requirements(api),
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
        deployed = self._deployed()
        if deployed.get(api.name) != version:
            write_json_atomic(self.loaded.root / DEPLOYED_FILE, {**deployed, api.name: version})
        # While the update runs, the controller keeps no count for this API: the steps below do.
        write_desired(self.state_dir, api.name, None)
        if old:
            progress(f"{api.name}: rolling update to {version} ({len(old)} old replica(s))")
        surge, unavailable = api.update.resolve(desired)
        deadline = time.monotonic() + READY_TIMEOUT
        last = ""
        while True:
            alive = [c for c in self.containers() if c.api == api.name and c.state not in ("exited", "dead")]
            new = [c for c in alive if c.version == version]
            old = [c for c in alive if c.version != version]
            self._raise_if_failed(api, new)
            fleet = Fleet(
                new_ready=sum(c.ready for c in new),
                new_starting=sum(not c.ready for c in new),
                old_ready=sum(c.ready for c in old),
                old_starting=sum(not c.ready for c in old),
            )
            line = f"{api.name}: {fleet.new_ready}/{desired} replicas ready"
            if line != last:
                progress(line)
                last = line
            step = next_step(fleet, desired, surge, unavailable)
            if step.done:
                break
            if step.start or step.stop_new:
                self._scale_to(api, version, len(new) + step.start - step.stop_new)
            retiring = sorted(old, key=lambda c: c.ready)[: step.stop_old]  # not-ready ones first
            for container in retiring:
                progress(f"{api.name}: stopping old replica {container.name}")
                docker("stop", "-t", str(int(_stop_timeout(api))), container.id)
                docker("rm", container.id)
            if step.idle:
                self._raise_if_torn_down()
                if time.monotonic() > deadline:
                    raise StackError(f"{line} after {READY_TIMEOUT:.0f}s; see `stack logs {api.name}`")
                time.sleep(1)
        write_desired(self.state_dir, api.name, Desired(version, desired))
        if old:
            progress(f"{api.name}: rolling update done")

    def _raise_if_torn_down(self) -> None:
        """Someone ran `docker compose down` (or removed the gateway) while we wait: stop, do not wait 10 minutes."""
        gateway = docker(
            "ps", "-q", "--filter", f"label={PROJECT_LABEL}={self.project}", "--filter", "label=stack.role=gateway"
        ).split()
        if not gateway:
            raise StackError(
                f"the stack {self.project} was torn down while `stack up` was waiting for it "
                f"(its gateway is gone); run `stack up {self.loaded.root}` again"
            )

    def _raise_if_failed(self, api: Api, containers: list[Container]) -> None:
        broken = [c for c in containers if c.failed]
        if not broken:
            return
        c = broken[0]
        logs = subprocess.run(["docker", "logs", "--tail", "20", c.id], capture_output=True, text=True)
        raise StackError(
            f"replica {c.name} of API {api.name} failed to start "
            f"(state {c.state}, exit code {c.exit_code}); its last log lines:\n{(logs.stdout + logs.stderr).strip()}"
        )

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
            self._raise_if_failed(api, mine)
            if time.monotonic() > deadline:
                raise StackError(f"{line} after {READY_TIMEOUT:.0f}s; see `stack logs {api.name}`")
            time.sleep(1)

    # -- status, logs, scale, down -----------------------------------------------------------------

    def status(self) -> StackStatus:
        containers = self.containers()
        digest = project_digest(self.loaded)
        decisions = self._decisions()
        manual = manual_apis(self.state_dir)
        deployed = self._deployed()
        apis = []
        for api in self.loaded.spec.apis:
            mine = [c for c in containers if c.api == api.name]
            alive = [c for c in mine if c.state not in ("exited", "dead")]
            versions = sorted({c.version for c in alive})
            version = deployed.get(api.name) or (versions[0] if len(versions) == 1 else "")
            current = [c for c in alive if c.version == version]
            ready = [c for c in alive if c.ready]
            updating = any(c.version != version for c in alive)
            if not alive and self._desired_count(api.name) == 0:
                state = "scaled to zero"
            elif any(c.failed for c in current) and not ready:
                state = "error"
            elif updating:
                state = "updating"
            elif current and len([c for c in current if c.ready]) >= len(current):
                state = "live"
            else:
                state = "starting" if current else "stopped"
            failed = [c for c in current if c.failed]
            apis.append(
                ApiStatus(
                    name=api.name,
                    status=state,
                    ready=len(ready),
                    desired=max(len(current), len(alive) - len(current)) if updating else len(current),
                    endpoint=api.endpoint,
                    version=version,
                    changed=bool(version) and version != api_version(api, digest),
                    error=f"replica {failed[0].name} is {failed[0].state} (exit code {failed[0].exit_code})"
                    if failed
                    else None,
                    autoscaled=api.autoscaled and api.name not in manual,
                    autoscaler=decisions.get(api.name),
                    min_replicas=api.autoscaling.min_replicas,
                    max_replicas=api.autoscaling.max_replicas,
                    replicas=[
                        ReplicaStatus(
                            id=c.name,
                            state="ready" if c.ready else c.state,
                            version=c.version,
                            health=c.health,
                        )
                        for c in mine
                    ],
                    traffic=self._traffic(api.name),
                )
            )
        apis = [check_routed(api, self.loaded.spec.gateway.port) for api in apis]
        notes = self._controller_notes() if containers else []
        splitters = splitter_status(splitters_of(self.loaded.spec), self.state_dir)
        return StackStatus(self.project, "compose", self.loaded.spec.gateway.port, apis, notes, splitters=splitters)

    def split(self, splitter: str, weights: dict[str, int]) -> None:
        routes_file = self.loaded.root / CONTROL_DIR / "routes" / "routes.yml"
        spec = self.loaded.spec
        change(self.state_dir, routes_file, spec.project, splitters_of(spec), splitter, weights)

    def _controller_notes(self) -> list[str]:
        """Say so when the controller is not running: nothing replaces a killed replica then."""
        ids = docker(
            "ps", "-aq", "--filter", f"label={PROJECT_LABEL}={self.project}", "--filter", "label=stack.role=autoscaler"
        ).split()
        states = [item["State"] for item in json.loads(docker("inspect", *ids))] if ids else []
        if any(state["Status"] == "running" for state in states):
            return []
        how = "missing"
        if states:
            state = states[0]
            how = f"{state['Status']} (exit code {state.get('ExitCode', 0)}, since {state.get('FinishedAt', '?')[:19]})"
        return [
            f"the controller (autoscaler service) is {how}: killed replicas are not replaced, the gateway's routes "
            f"do not follow the replicas and nothing autoscales; `stack up {self.loaded.root}` starts it again"
        ]

    def _desired_count(self, api: str) -> int | None:
        wanted = read_desired(self.state_dir).get(api)
        return None if wanted is None else wanted.replicas

    def _deployed(self) -> dict[str, str]:
        """The version each API was last rolled to by `stack up` (not what the files would build now)."""
        try:
            data = json.loads((self.loaded.root / DEPLOYED_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return (
            {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}
            if isinstance(data, dict)
            else {}
        )

    def _decisions(self) -> dict[str, Any]:
        """The autoscaler's last decisions per API, as it saved them in the shared state directory."""
        try:
            data = json.loads((self.state_dir / DECISIONS_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _traffic(self, api: str) -> Traffic:
        return prometheus_traffic(f"http://127.0.0.1:{self.loaded.spec.prometheus.port}", api)

    def logs(self, api: str, follow: bool) -> Iterator[str]:
        """Every replica's lines, each prefixed with the replica's name as `stack status` shows it."""
        if api not in {a.name for a in self.loaded.spec.apis}:
            raise StackError(f"no API named {api!r}; the spec has: {', '.join(a.name for a in self.loaded.spec.apis)}")
        mine = [c for c in self.containers() if c.api == api]
        if not mine:
            raise NotRunning(f"API {api!r} has no containers; is the stack up? (`stack up {self.loaded.root}`)")
        yield from follow_container_logs([c.name for c in mine], follow)

    def scale(self, api_name: str, replicas: int, force: bool, progress: Progress) -> None:
        api = check_scale(self.loaded, api_name, replicas, force, "stack up")
        if api.autoscaled:
            # Tell the autoscaler to leave this API alone until the next `stack up`.
            self.state_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.state_dir / MANUAL_FILE, sorted(manual_apis(self.state_dir) | {api.name}))
        version = api_version(api, project_digest(self.loaded))
        # The controller keeps the lower count from the start of a scale-in, the higher one once it is reached.
        if replicas < self._count(api, version):
            write_desired(self.state_dir, api.name, Desired(version, replicas))
        self._scale_to(api, version, replicas)
        self._wait(api, version, replicas, progress)
        write_desired(self.state_dir, api.name, Desired(version, replicas))

    def _count(self, api: Api, version: str) -> int:
        return sum(1 for c in self.containers() if c.api == api.name and c.version == version and c.state == "running")

    def scaler(self) -> Scaler:
        from stack.targets.compose.scaler import ComposeScaler

        return ComposeScaler(self.project)

    def down(self, volumes: bool) -> bool:
        """Stop and remove the stack; False when nothing of it was there."""
        self.preflight()
        existed = bool(docker("ps", "-aq", "--filter", f"label={PROJECT_LABEL}={self.project}").split())
        if not (self.plan_dir / "compose.yaml").exists():
            plan_compose(self.loaded, self.plan_dir).write(self.plan_dir)
        # Nothing is brought back once `down` begins: the controller keeps no count.
        if (self.state_dir / DESIRED_FILE).exists():
            write_json_atomic(self.state_dir / DESIRED_FILE, {})
        self._compose("down", "--remove-orphans", *(["--volumes"] if volumes else []), capture=False)
        (self.state_dir / CANARY_FILE).unlink(missing_ok=True)  # brought up again, canaries start over
        return existed


def _stop_timeout(api: Api) -> float:
    return api.predictor.drain_delay + api.predictor.grace_period + 5
