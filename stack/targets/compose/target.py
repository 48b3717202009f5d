"""The single-box target: Docker Compose on a real engine.

`stack up` plans and builds, starts the gateway, Prometheus and the controller, then rolls each API
to its new version (stack.targets.compose.rollout: one Compose service per version, a failed rollout
rolled back). Every `docker compose up` names its services and their current counts (`--scale`), so it
never resets what the autoscaler or `stack scale` set. After a good rollout each API's older images
are pruned to `build.keep_images`; `stack up` returns once every replica applies the API keys it wrote.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator

from stack.atomic import write_json_atomic
from stack.control.autoscale.scaler import Scaler
from stack.control.canary import STATE_FILE as CANARY_FILE
from stack.errors import NameTaken, NotRunning, StackError
from stack.plan.gpus import host_gpus, write_placement
from stack.plan.images import CONTROLLER_DOCKERFILE, api_dockerfile_name, service_name
from stack.plan.plan import Plan
from stack.plan.serving import extra_requirements, keys_removed
from stack.plan.values import CONTROLLER_STATE_DIR as AUTOSCALER_STATE_DIR
from stack.plan.versions import current_versions, project_files
from stack.spec import Api, LoadedSpec
from stack.splits import change, clear_overrides, splitters_of
from stack.status import StackStatus
from stack.targets import build, images
from stack.targets.base import check_scale, refuse_nomad_autoscaler
from stack.targets.compose.components import left_running
from stack.targets.compose.desired import (
    DESIRED_FILE,
    KILLS_FILE,
    MANUAL_FILE,
    RESTARTS_FILE,
    Desired,
    manual_apis,
    read_health,
    write_desired,
)
from stack.targets.compose.engine import PROJECT_LABEL, ComposeProject, userland_proxy
from stack.targets.compose.plan import CONTROL_DIR, DASHBOARD_PORT, KEYS_FILE
from stack.targets.compose.plan import plan as plan_compose
from stack.targets.compose.rollout import PLACEMENT_FILE, Rollout, read_deployed
from stack.targets.compose.scaler import ComposeScaler
from stack.targets.compose.setup import batch_templates, prepare_control_dir, prepare_exits_dir
from stack.targets.compose.status import observe
from stack.targets.docker import docker
from stack.targets.gateway import readiness_url, wait_for_batch_apis, wait_until_routed
from stack.targets.logs import container_logs, follow_containers

Progress = Callable[[str], None]
PLAN_DIR = ".stack/plan/compose"
KEYS_TIMEOUT = 20.0  # seconds `stack up` waits for every replica to apply new API keys


def open_target(
    loaded: LoadedSpec, gpus: int | None = None, gpu_mem: int | None = None, registry: str | None = None
) -> ComposeTarget:
    """`gpus`/`gpu_mem`: this host's GPUs as `--gpus N --gpu-mem SIZE` gave them (None: ask nvidia-smi)."""
    return ComposeTarget(loaded, host_gpus=gpus, gpu_mem=gpu_mem)


class ComposeTarget:
    name = "compose"

    def __init__(self, loaded: LoadedSpec, host_gpus: int | None = None, gpu_mem: int | None = None) -> None:
        self.loaded = loaded
        self.host_gpus = host_gpus  # None: ask nvidia-smi when planning
        self.gpu_mem = gpu_mem
        self.project = loaded.spec.project
        self.plan_dir = loaded.root / PLAN_DIR
        self.state_dir = loaded.root / AUTOSCALER_STATE_DIR
        self.engine = ComposeProject(loaded, self.plan_dir, self.state_dir)
        self.rollout = Rollout(loaded, self.engine, self.state_dir)

    # -- up -----------------------------------------------------------------------------------------

    def up(self, progress: Progress) -> StackStatus:
        refuse_nomad_autoscaler(self.loaded, "compose")
        self.engine.preflight()
        self._own(progress)
        plan = plan_compose(self.loaded, self.plan_dir, host_gpus=host_gpus(self.host_gpus, self.gpu_mem))
        try:
            opened = keys_removed((self.plan_dir / KEYS_FILE).read_text(), self.loaded)
        except OSError:
            opened = None
        if opened:
            progress(opened)
        plan.write(self.plan_dir)
        write_placement(self.loaded.root / PLACEMENT_FILE, plan.placement)
        for line in plan.placement.lines():
            progress(f"GPU placement: {line}")
        for note in plan.notes:
            progress(f"note: {note}")
        batch = self.loaded.spec.batch_apis
        versions = plan.versions
        build.warn_secrets(project_files(self.loaded), progress)
        for api in self.loaded.spec.every_api:
            self._build(api, plan, progress)
        self.engine.check_gateway_port()
        prepare_control_dir(self.loaded, self.state_dir)
        prepare_exits_dir(self.plan_dir)
        build.build_controller(self.loaded, plan.files[CONTROLLER_DOCKERFILE], progress)
        progress("starting Traefik, Prometheus, the controller and its dashboard")
        # `stack up` hands every API back to the autoscaler, and re-applies stack.yaml's weights.
        (self.state_dir / MANUAL_FILE).unlink(missing_ok=True)
        clear_overrides(self.state_dir)
        self.engine.compose("up", "-d", "traefik", "prometheus", "autoscaler", "dashboard")
        for api in self.loaded.spec.apis:
            self.rollout.run(api, versions[api.name], progress)
            self._wait_routed(api, progress)
        self._wait_keys(progress)
        for api in self.loaded.spec.every_api:
            if api.predictor.image is None:
                pruned = images.prune(self.project, api.name, versions[api.name], self.loaded.spec.build.keep_images)
                if pruned:
                    names = ", ".join(i.tag for i in pruned)
                    progress(f"{api.name}: removed {len(pruned)} old image(s) (build.keep_images): {names}")
        batch_templates(self.engine, batch, versions, progress)
        wait_for_batch_apis([a.endpoint for a in batch], self.engine.check_port())
        if userland_proxy(self.loaded.spec.gateway.port):
            progress(
                "note: the engine's userland proxy carries the gateway's port, one more hop per request: "
                '"userland-proxy": false in /etc/docker/daemon.json (compose/daemon.json) forwards it with NAT '
                "instead (about 1.4x the gateway's requests per second, bench/RESULTS.md)"
            )
        return self.status()

    def _wait_keys(self, progress: Progress, timeout: float = KEYS_TIMEOUT) -> None:
        """Return once every serving replica applies the API keys file just written (the controller's probes
        read it off each replica's /healthz): a revoked key is refused, a new one works, when `stack up` ends."""
        try:
            found = (self.plan_dir / KEYS_FILE).stat()
        except OSError:
            return
        generation = f"{found.st_ino}-{found.st_mtime_ns}"
        deadline = time.monotonic() + timeout
        while True:
            probed = read_health(self.state_dir)
            behind = [
                c.name
                for c in self.engine.containers()
                if c.api and c.ready and (h := probed.get(c.name)) is not None and h.keys != generation
            ]
            if not behind:
                return
            if time.monotonic() > deadline:
                progress(f"warning: replica(s) {', '.join(behind)} did not confirm the new API keys yet")
                return
            time.sleep(0.25)

    def _wait_routed(self, api: Api, progress: Progress) -> None:
        """Return only once a request through the gateway reaches the API: `stack up` promises a live URL."""
        url = readiness_url(self.engine.check_port(), api.endpoint)
        if not wait_until_routed(url, timeout=30):
            progress(f"{api.name}: warning: the gateway does not reach it yet ({url})")

    def _build(self, api: Api, plan: Plan, progress: Progress) -> None:
        """Build the image the plan names for an API (unless it runs a prebuilt one, or it is built already)."""
        if api.predictor.image is not None:
            return
        image, version = plan.images[api.name], plan.versions[api.name]
        if build.image_exists(image):
            progress(f"{api.name}: image {image} is up to date")
            return
        context = build.assemble(
            project_files(self.loaded),
            service_name(api, version),
            plan.files[api_dockerfile_name(api)],
            self.loaded.requirements_file(api),
            self.loaded.spec.build.base_image,
            self.loaded.spec.build.wheelhouse,
            progress,
            extra=extra_requirements(api, self.loaded.spec.tracing is not None),
        )
        build.build_image(context, image, progress, images.labels(self.project, api.name, version))

    def prometheus_url(self) -> str:
        if not self.loaded.spec.prometheus.enabled:
            raise StackError("this stack runs without Prometheus (prometheus.enabled: false): nothing was counted")
        return f"http://127.0.0.1:{self.loaded.spec.prometheus.port}"

    def dashboard_url(self) -> str:
        try:
            published = self.engine.compose("port", "dashboard", str(DASHBOARD_PORT), timeout=10).strip()
        except StackError:
            published = ""
        if not published:
            raise NotRunning(f"the dashboard of {self.project} is not running; `stack up {self.loaded.root}` starts it")
        return f"http://127.0.0.1:{published.rsplit(':', 1)[1]}/dashboard/"

    def running(self) -> bool:
        try:
            return bool(docker("ps", "-q", "--filter", f"label={PROJECT_LABEL}={self.project}", timeout=10).split())
        except (StackError, subprocess.TimeoutExpired):
            return False

    def status(self) -> StackStatus:
        self._own()
        return observe(self.loaded, self.engine, self.state_dir)

    def _own(self, progress: Progress | None = None) -> None:
        """Refuse to act on containers of this project name that another directory's `stack up` started:
        one stack per project name per machine. A directory gone (or without a stack.yaml) owns nothing."""
        owner = self.engine.owner()
        if owner is None:
            return
        if not (owner / "stack.yaml").is_file():
            if progress is not None:
                progress(f"note: project {self.project} was started from {owner}, which is gone: taking it over")
            return
        raise NameTaken(
            f"project {self.project} already runs on this machine from {owner}; one stack per project name: "
            f"stop it there (`stack down {owner}`), or give this copy a name of its own (`project:` in "
            f"{self.loaded.path})"
        )

    def split(self, splitter: str, weights: dict[str, int]) -> None:
        self._own()
        routes_file = self.loaded.root / CONTROL_DIR / "routes" / "routes.yml"
        spec = self.loaded.spec
        change(self.state_dir, routes_file, spec.project, splitters_of(spec), splitter, weights)

    def _deployed(self) -> dict[str, str]:
        """The version each API was last rolled to by `stack up` (not what the files would build now)."""
        return read_deployed(self.loaded.root)

    def logs(self, api: str, follow: bool, since: float | None = None) -> Iterator[str]:
        """Every replica's lines, each prefixed with the replica's name as `stack status` shows it."""
        self.loaded.spec.api(api)  # UnknownApi names the ones it has
        self._own()
        mine = [c for c in self.engine.containers() if c.api == api]
        if not mine:
            raise NotRunning(f"API {api!r} has no containers; is the stack up? (`stack up {self.loaded.root}`)")
        if follow:  # re-listed as it goes: the replicas that start later are followed too
            yield from follow_containers(lambda: self.engine.running_of(api), since)
        else:
            yield from container_logs([c.name for c in mine], since)

    def scale(self, api_name: str, replicas: int, force: bool, progress: Progress) -> None:
        self._own()
        manual = api_name in manual_apis(self.state_dir)
        api = check_scale(self.loaded, api_name, replicas, force, "stack up", manual=manual)
        if api.autoscaled and force:
            # Tell the autoscaler to leave this API alone until the next `stack up`.
            self.state_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.state_dir / MANUAL_FILE, sorted(manual_apis(self.state_dir) | {api.name}))
        # What runs, whatever changed in the files since (their version would name a service not deployed).
        version = self._deployed().get(api.name) or current_versions(self.loaded)[api.name]
        # The controller keeps the lower count from the start of a scale-in, the higher one once it is reached.
        if replicas < self._count(api, version):
            write_desired(self.state_dir, api.name, Desired(version, replicas))
        self.engine.scale_to(api, version, replicas)
        self.engine.wait(api, version, replicas, progress)
        write_desired(self.state_dir, api.name, Desired(version, replicas))

    def _count(self, api: Api, version: str) -> int:
        return sum(
            1 for c in self.engine.containers() if c.api == api.name and c.version == version and c.state == "running"
        )

    def scaler(self) -> Scaler:
        return ComposeScaler(self.project)

    def down(self, volumes: bool) -> bool:
        """Stop and remove the stack; False when nothing of it was there."""
        self.engine.preflight()
        self._own()
        existed = bool(docker("ps", "-aq", "--filter", f"label={PROJECT_LABEL}={self.project}").split())
        if not (self.plan_dir / "compose.yaml").exists():
            plan_compose(self.loaded, self.plan_dir).write(self.plan_dir)
        # Nothing is brought back once `down` begins: the controller keeps no count.
        if (self.state_dir / DESIRED_FILE).exists():
            write_json_atomic(self.state_dir / DESIRED_FILE, {})
        self.engine.compose("down", "--remove-orphans", *(["--volumes"] if volumes else []), capture=False)
        for name in (CANARY_FILE, RESTARTS_FILE, KILLS_FILE):  # brought up again, it starts over
            (self.state_dir / name).unlink(missing_ok=True)
        return existed

    def remove_images(self) -> str:
        return images.removed_text(images.remove_all(self.project, [a.name for a in self.loaded.spec.every_api]))

    def image_note(self) -> str:
        apis = [a.name for a in self.loaded.spec.every_api]
        return images.note(self.project, apis, self.loaded.spec.build.base_image)

    def left_running(self) -> str:
        return left_running(self.project, self.loaded.root)
