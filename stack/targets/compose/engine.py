"""The Compose project of a stack as the engine sees it: its containers, `docker compose` on its plan,
and the checks `stack up` makes on the way (engine reachable, a free gateway port, a failing replica)."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from serving.exit_reason import read_exit_reason
from serving.supervisor import port_is_free
from stack.errors import StackError
from stack.plan.images import service_name
from stack.spec import Api, LoadedSpec
from stack.status import ReplicaState
from stack.targets.compose.desired import read_health
from stack.targets.compose.plan import EXITS_DIR
from stack.targets.docker import NO_DOCKER, docker, inspect

Progress = Callable[[str], None]
READY_TIMEOUT = 600.0
PROJECT_LABEL = "com.docker.compose.project"
WORKING_DIR_LABEL = "com.docker.compose.project.working_dir"  # the plan's directory, under the project's root
SERVICE_LABEL = "com.docker.compose.service"


@dataclass(frozen=True)
class Container:
    id: str
    name: str
    service: str
    api: str
    version: str
    state: str  # running, exited, restarting, created, ...
    # The controller's probes (health.json): healthy, starting, not answering, stuck, unhealthy; "" when not running
    health: str
    exit_code: int
    role: str = ""  # gateway, prometheus, autoscaler (the controller); "" for a replica
    restarts: int = 0  # Docker's RestartCount: times its restart policy started it again
    finished_at: str = ""  # when it last stopped (Docker's State.FinishedAt)
    reason: str = ""  # why the probes find it stuck or unhealthy

    @property
    def ready(self) -> bool:
        return self.state == "running" and self.health == "healthy"

    @property
    def failed(self) -> bool:
        return self.state in ("exited", "dead", "restarting") or self.health in ("unhealthy", "stuck")

    @property
    def replica_state(self) -> ReplicaState:
        if self.ready:
            return ReplicaState.READY
        if self.state in ("exited", "dead", "removing"):
            return ReplicaState.EXITED
        if self.state == "restarting" or self.health == "unhealthy":
            return ReplicaState.FAILED
        if self.health in ("stuck", "not answering"):
            return ReplicaState.STUCK
        return ReplicaState.STARTING  # created, or running and not ready yet


class ComposeProject:
    def __init__(self, loaded: LoadedSpec, plan_dir: Path, state_dir: Path | None = None) -> None:
        self.loaded = loaded
        self.project = loaded.spec.project
        self.plan_dir = plan_dir
        self.state_dir = state_dir  # the controller's: what its probes say of each replica (health.json)

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

    def owner(self) -> Path | None:
        """The directory whose `stack up` started the running containers of this project name, when it is not
        this one (Compose names containers by project, so a copy of a project would take them over)."""
        listed = docker(
            "ps",
            "-a",
            "--filter",
            f"label={PROJECT_LABEL}={self.project}",
            "--format",
            f'{{{{.Label "{WORKING_DIR_LABEL}"}}}}',
        )
        mine = self.plan_dir.resolve()
        for line in sorted(set(listed.split())):
            plan_dir = Path(line)
            if plan_dir.resolve() != mine:
                return plan_dir.parents[2] if len(plan_dir.parents) > 2 else plan_dir
        return None

    # -- containers ----------------------------------------------------------------------------

    def containers(self) -> list[Container]:
        ids = docker("ps", "-aq", "--filter", f"label={PROJECT_LABEL}={self.project}").split()
        probed = read_health(self.state_dir) if self.state_dir is not None else {}
        found = []
        for item in inspect(*ids):
            labels = item["Config"]["Labels"] or {}
            if "stack.api" not in labels and "stack.role" not in labels:
                continue
            name = item["Name"].lstrip("/")
            record = probed.get(name)
            running = item["State"]["Status"] == "running"
            current = (
                record is not None
                and record.id == item["Id"][:12]
                and record.started == item["State"].get("StartedAt", "")
            )
            health = (record.health if current and record else "starting") if running and "stack.api" in labels else ""
            found.append(
                Container(
                    item["Id"][:12],
                    item["Name"].lstrip("/"),
                    labels.get(SERVICE_LABEL, ""),
                    labels.get("stack.api", ""),
                    labels.get("stack.version", ""),
                    item["State"]["Status"],
                    health,
                    item["State"].get("ExitCode", 0),
                    labels.get("stack.role", ""),
                    int(item.get("RestartCount") or 0),
                    str(item["State"].get("FinishedAt") or ""),
                    record.reason if current and record else "",
                )
            )
        return sorted(found, key=lambda c: c.name)

    def running_of(self, api: str) -> list[tuple[str, bool]]:
        """The API's containers: (name, running)."""
        return [(c.name, c.state == "running") for c in self.containers() if c.api == api]

    def compose(self, *args: str, capture: bool = True, timeout: float | None = None) -> str:
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

    def check_port(self) -> int:
        """Where the stack's own checks reach the routes from this host: the gateway's port, or with TLS
        (which may demand a client certificate) the plain probe entrypoint Docker published on 127.0.0.1."""
        gateway = self.loaded.spec.gateway
        if gateway.tls is None:
            return gateway.port
        try:
            published = self.compose("port", "traefik", "8079", timeout=10).strip()
        except StackError:
            return gateway.port  # the gateway is not running: the check fails there and says so
        return int(published.rsplit(":", 1)[1]) if published else gateway.port

    def check_gateway_port(self) -> None:
        port = self.loaded.spec.gateway.port
        ours = docker(
            "ps", "-q", "--filter", f"label={PROJECT_LABEL}={self.project}", "--filter", "label=stack.role=gateway"
        ).split()
        if not ours and not port_is_free("0.0.0.0", port):  # our own Traefik holding it is fine
            raise StackError(
                f"gateway port {port} is already in use; stop what uses it "
                f"(`ss -ltnp 'sport = :{port}'`) or set gateway.port in stack.yaml"
            )

    def services(self, api: Api, version: str) -> list[str]:
        base = service_name(api, version)
        if not api.compute.gpu:
            return [base]
        return [f"{base}-gpu{slot}" for slot in range(api.autoscaling.max_replicas)]

    def raise_if_torn_down(self) -> None:
        """Someone ran `docker compose down` (or removed the gateway) while we wait: stop, do not wait 10 minutes."""
        gateway = docker(
            "ps", "-q", "--filter", f"label={PROJECT_LABEL}={self.project}", "--filter", "label=stack.role=gateway"
        ).split()
        if not gateway:
            raise StackError(
                f"the stack {self.project} was torn down while `stack up` was waiting for it "
                f"(its gateway is gone); run `stack up {self.loaded.root}` again"
            )

    def raise_if_failed(self, api: Api, containers: list[Container]) -> None:
        broken = [c for c in containers if c.failed]
        if not broken:
            return
        c = broken[0]
        logs = subprocess.run(["docker", "logs", "--tail", "20", c.id], capture_output=True, text=True)
        said = read_exit_reason(self.plan_dir / EXITS_DIR / f"{c.id[:12]}.json")
        raise StackError(
            f"replica {c.name} of API {api.name} failed to start (state {c.state}, exit code {c.exit_code})"
            f"{': ' + said if said else ''}; its last log lines:\n{(logs.stdout + logs.stderr).strip()}"
        )

    def scale_to(self, api: Api, version: str, count: int) -> None:
        services = self.services(api, version)
        scales = (
            [f"{s}={count}" for s in services]
            if len(services) == 1
            else [f"{s}={1 if i < count else 0}" for i, s in enumerate(services)]
        )
        args = [arg for scale in scales for arg in ("--scale", scale)]
        self.compose("up", "-d", "--no-recreate", *args, *services)

    def wait(self, api: Api, version: str, count: int, progress: Progress) -> None:
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
            self.raise_if_failed(api, mine)
            if time.monotonic() > deadline:
                raise StackError(f"{line} after {READY_TIMEOUT:.0f}s; see `stack logs {api.name}`")
            time.sleep(1)

    # -- status, logs, scale, down -----------------------------------------------------------------

    def controller_notes(self) -> list[str]:
        """Say so when the controller is not running: nothing replaces a killed replica then."""
        ids = docker(
            "ps", "-aq", "--filter", f"label={PROJECT_LABEL}={self.project}", "--filter", "label=stack.role=autoscaler"
        ).split()
        states = [item["State"] for item in inspect(*ids)]
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


def userland_proxy(port: int) -> bool:
    """Whether the engine's userland proxy (a docker-proxy process) forwards this published port."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if args and args[0].endswith(b"docker-proxy") and b"-host-port" in args:
            at = args.index(b"-host-port")
            if at + 1 < len(args) and args[at + 1] == str(port).encode():
                return True
    return False
