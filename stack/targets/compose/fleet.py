"""The Compose stack's fleet: the one container that holds the Docker socket keeps the replicas.

It runs in the autoscaler service as the fleet of the stack's control plane
(stack.control.runtime: the autoscaler, canaries and activator beside it), and
keeps these things true whatever happens to the containers:

- **Routes.** Traefik reads its routes from a file (no socket in the gateway):
  every running replica that is not being stopped and whose /healthz says it is
  ready (the control plane's liveness probes, stack.control.liveness: Docker
  runs no health check), rewritten on the engine's `kill`, `die` and `start`
  events and as the probes' answers change, so a replica leaves the gateway the
  moment it is stopped, dies or stops answering (stack.targets.compose.replicas).
- **Liveness.** A replica the probes find stuck is restarted at once (killed: it
  answered what it held), an unhealthy one gracefully (drained); the reason is
  an event (`events.jsonl`) and `health.json` tells `stack status` each
  replica's health.
- **Scrape targets.** Prometheus reads its targets from a file (no socket, not
  root): every running replica with its API, version and name.
- **Counts** (stack.targets.compose.keeper). Each API's count, and the gateway,
  Prometheus and the dashboard, killed, stopped or removed behind the stack's
  back (which Docker's restart policy ignores), are brought back.
- **Restarts** (stack.targets.compose.restarts). Every new start of a container
  is a restart, counted with its reason in a file that outlives the engine (an
  engine restart is an event of its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
from docker.models.containers import Container
from prometheus_client import Counter

from stack.atomic import write_json_atomic
from stack.control.autoscale.config import RoutedApi
from stack.control.liveness import Decision, Probed
from stack.control.runtime import ControlPlane
from stack.targets.compose.desired import (
    ReplicaHealth,
    manual_apis,
    read_events,
    record_event,
    write_health,
)
from stack.targets.compose.keeper import Keeper
from stack.targets.compose.replicas import health_table, routable
from stack.targets.compose.restarts import Restarts, record_oom, started_at
from stack.targets.compose.scaler import ALIVE, PROJECT_LABEL, ComposeScaler

LOGGER = logging.getLogger("stack.controller")
TARGETS_DIR = "targets"  # under the control directory: Prometheus' file_sd
TICK = 1.0  # seconds between passes when no event wakes the controller
STARTING_TICK = 0.25  # while a replica starts: it is routed within this of its probe saying ready
EVENTS = ("start", "kill", "die", "stop", "destroy", "oom")


class ComposeFleet:
    def __init__(
        self,
        project: str,
        network: str,
        port: int,
        apis: list[RoutedApi],
        control_dir: Path,
        state_dir: Path,
        scaler: ComposeScaler,
    ) -> None:
        self.project = project
        self.network = network
        self.port = port
        self.apis = apis
        self.control_dir = control_dir
        self.state_dir = state_dir
        self.scaler = scaler
        self.client = scaler.client
        self.stopping_ids: set[str] = set()  # containers the engine was told to stop or kill
        self.ids_lock = threading.Lock()
        self.replicas: list[Container] = []  # as of the last pass
        self.wake_up = asyncio.Event()
        self.ready_urls: dict[str, list[str]] = {}  # api -> serving replicas, as of the last pass
        self.starting_urls: dict[str, list[str]] = {}  # api -> running replicas, healthy or not yet
        self.start_errors: dict[str, str] = {}  # api -> why its replicas cannot start, as of the last pass
        self.plane: ControlPlane | None = None  # the control plane this fleet runs in (its routes, its metrics)
        self.restored: Counter | None = None
        self.was_ready: dict[str, str] = {}  # container id -> the start (StartedAt) in which it was ready
        self.restarts = Restarts(state_dir)
        self.keeper = Keeper(apis, state_dir, scaler, self._count_restored)
        self.health_written: dict[str, ReplicaHealth] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        scaler.ready = self.serving

    # -- the Fleet of the control plane ------------------------------------------------------------

    def manual(self, api: str) -> bool:
        return api in manual_apis(self.state_dir)

    async def run(self, plane: ControlPlane, stopping: asyncio.Event) -> None:
        self.plane = plane
        self._loop = asyncio.get_running_loop()
        self.restored = Counter(
            "stack_controller_replicas_restored",
            "Replicas started again or copied because one was killed, stopped or removed behind the stack's back.",
            ["api"],
            registry=plane.registry,
        )
        loop = asyncio.get_running_loop()
        threading.Thread(target=self._watch_events, args=(loop,), name="docker-events", daemon=True).start()
        changed = plane.liveness.changed
        while not stopping.is_set():
            self.wake_up.clear()
            changed.clear()
            try:
                await asyncio.to_thread(self.tick)
            except docker.errors.DockerException as exc:
                LOGGER.warning(f"cannot read the stack's containers: {exc}")
            except Exception:
                LOGGER.exception("controller pass failed; the next one comes anyway")
            waiters = [
                asyncio.ensure_future(self.wake_up.wait()),
                asyncio.ensure_future(stopping.wait()),
                asyncio.ensure_future(changed.wait()),  # a replica turned ready, or silent: route it now
            ]
            timeout = STARTING_TICK if self._starting() else TICK
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()

    def _watch_events(self, loop: asyncio.AbstractEventLoop) -> None:
        """The engine's events for this project wake a pass at once; a lost stream is reopened."""
        while True:
            try:
                filters = {"type": "container", "label": f"{PROJECT_LABEL}={self.project}", "event": list(EVENTS)}
                for event in self.client.events(decode=True, filters=filters):
                    action = event.get("Action") or event.get("status") or ""
                    if action == "oom":
                        record_oom(self.client, self.state_dir, event.get("id", ""))
                    if action == "die":
                        with contextlib.suppress(TypeError, ValueError):
                            code = (event.get("Actor") or {}).get("Attributes", {}).get("exitCode")
                            self.restarts.exit_codes[event.get("id", "")] = int(code)
                    with self.ids_lock:
                        if action in ("kill", "die"):  # told to stop, or dead: out of the routes now
                            self.stopping_ids.add(event.get("id", ""))
                        elif action == "start":  # (re)started: routed again once healthy
                            self.stopping_ids.discard(event.get("id", ""))
                    loop.call_soon_threadsafe(self.wake_up.set)
            except Exception as exc:  # the engine restarted, the socket closed: try again
                LOGGER.warning(f"Docker event stream lost ({exc}); reopening")
            time.sleep(1)

    # -- waking an API scaled to zero (the activator's Waker) ---------------------------------

    def known(self, api: str) -> bool:
        return any(a.name == api for a in self.apis)

    async def activate(self, api: str) -> None:
        routed = next(a for a in self.apis if a.name == api)
        LOGGER.info(f"{api}: a request woke it from zero")
        self.start_errors.pop(api, None)  # what the stopped replica looked like is no news
        with self.ids_lock:
            stopping = set(self.stopping_ids)
        await asyncio.to_thread(self.scaler.wake, api, routed.gpu_slots, stopping)
        self.wake_up.set()

    async def ready_url(self, api: str) -> str | None:
        urls = self.ready_urls.get(api)
        if urls:
            return urls[0]
        # The liveness probes ask a starting replica every quarter second: a woken replica is routed as
        # soon as its model is loaded.
        if self.plane is None:
            return None
        for container in self.replicas:
            if container.labels.get("stack.api") == api and self.serving(container):
                address = self._address(container)
                if address is not None:
                    return f"http://{address}:{self.port}"
        return None

    def start_error(self, api: str) -> str | None:
        return self.start_errors.get(api)

    # -- one pass, in a worker thread --------------------------------------------------------

    def tick(self) -> None:
        if self.replicas:
            # First the routes from what we knew, less what the engine just reported stopping or dead:
            # a dead replica leaves the gateway without waiting for the engine to list every container.
            self._write_routes(self.replicas)
        containers = self.client.containers.list(
            all=True, ignore_removed=True, filters={"label": f"{PROJECT_LABEL}={self.project}"}
        )
        live_ids = {c.id for c in containers if c.status in ALIVE}
        with self.ids_lock:  # the event thread adds to it meanwhile
            self.stopping_ids &= live_ids  # a dead or removed container needs no more remembering
        replicas = [c for c in containers if "stack.api" in c.labels]
        self.replicas = replicas
        self.restarts.observe(containers)
        self._write_routes(replicas)
        self._write_health(replicas)
        write_targets(self.control_dir, replicas, self._address, self.port)
        self.keeper.keep(containers, replicas)

    def rolling_out(self, api: str) -> str | None:
        """Why a canary cannot be judged now: replicas of more than one version are running."""
        versions = {
            c.labels.get("stack.version", "")
            for c in self.replicas
            if c.labels.get("stack.api") == api and c.status == "running"
        }
        return f"{api} is rolling out its new version ({len(versions)} versions running)" if len(versions) > 1 else None

    def _address(self, container: Container) -> str | None:
        networks = container.attrs.get("NetworkSettings", {}).get("Networks") or {}
        address = (networks.get(self.network) or {}).get("IPAddress")
        return address or None

    def serving(self, container: Container) -> bool:
        """Running, not being stopped, and ready by its last probe (its current start)."""
        if container.status != "running" or container.id in self.stopping_ids or container.id in self.scaler.draining:
            return False
        return self.plane is not None and self.plane.liveness.ready(_key(container))

    def _starting(self) -> bool:
        """A replica is running but not ready yet: pass more often, it is routed the moment it is."""
        return any(
            c.status == "running" and c.id not in self.stopping_ids and not self.serving(c) for c in self.replicas
        )

    # -- liveness (stack.control.liveness): what the probes ask, and what they condemn -------------

    def probe_targets(self) -> list[Probed]:
        timeouts = {api.name: api.health_check_timeout for api in self.apis}
        found = []
        with self.ids_lock:
            leaving = self.stopping_ids | self.scaler.draining
        for c in self.replicas:
            api = c.labels.get("stack.api", "")
            # A paused container (`docker pause`, a frozen cgroup) is alive but answers nothing: it is asked too.
            if c.status not in ("running", "paused") or c.id in leaving or api not in timeouts:
                continue
            address = self._address(c)
            if address is None:
                continue
            started = started_at(c)
            if self.plane is not None and self.plane.liveness.ready(_key(c)):
                self.was_ready[c.id] = started
            serving = self.was_ready.get(c.id) == started
            found.append(Probed(api, c.name, f"http://{address}:{self.port}", serving, timeouts[api], started))
        return found

    async def replace(self, replica: Probed, decision: Decision) -> None:
        container = next((c for c in self.replicas if c.name == replica.replica), None)
        if container is None:
            return
        with self.ids_lock:
            self.stopping_ids.add(container.id)  # out of the routes at once
        self.restarts.replacing[container.id] = decision.reason
        await asyncio.to_thread(self._write_routes, self.replicas)
        # `stack status` counts it out before the event says it is replaced: the two never disagree.
        await asyncio.to_thread(self._write_health, self.replicas)
        how = "restarted at once" if decision.kill else "drained and restarted"
        record_event(self.state_dir, replica.api, f"replica {container.name} replaced: {decision.reason} ({how})")
        routed = next((a for a in self.apis if a.name == replica.api), None)
        timeout = 0 if decision.kill else int(routed.stop_timeout if routed else 30)

        def restart() -> None:
            try:
                container.reload()
                if container.status == "paused":  # frozen (`docker pause`): the engine stops no paused container
                    container.unpause()
                container.restart(timeout=timeout)
            except docker.errors.DockerException as exc:
                LOGGER.warning(f"cannot restart {container.name}: {exc}")
            self.wake_up_threadsafe()

        threading.Thread(target=restart, name=f"replace-{container.name}", daemon=True).start()

    def _count_restored(self, api: str) -> None:
        if self.restored is not None:
            self.restored.labels(api).inc()

    def events(self, api: str) -> list[str]:
        return read_events(self.state_dir, api)

    def wake_up_threadsafe(self) -> None:
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self.wake_up.set)

    # -- restarts, counted by the controller ----------------------------------------------------

    def _write_health(self, replicas: list[Container]) -> None:
        """What the probes say of each running replica, for `stack status` and `stack up` on the host."""
        plane = self.plane
        if plane is None:
            return
        table = health_table(replicas, lambda c: plane.liveness.of(_key(c)), self.restarts.replacing)
        if table != self.health_written:
            write_health(self.state_dir, table)
            self.health_written = table

    def _write_routes(self, replicas: list[Container]) -> None:
        plane = self.plane
        assert plane is not None
        table: dict[str, list[str]] = {}
        for api in self.apis:
            found = routable(
                api.name,
                replicas,
                self._url,
                self.serving,
                lambda c: plane.liveness.only_silent(_key(c)),
                self.stopping_ids,
                self.scaler.draining,
            )
            self.ready_urls[api.name] = table[api.name] = found.routed
            self.starting_urls[api.name] = found.running
            if found.failing:
                self.start_errors[api.name] = found.failing
            else:
                self.start_errors.pop(api.name, None)
        if plane.routes.publish(table):
            LOGGER.info("routes: " + "; ".join(f"{api} -> {len(urls)} replica(s)" for api, urls in table.items()))

    def _url(self, container: Container) -> str | None:
        address = self._address(container)
        return f"http://{address}:{self.port}" if address else None


def _key(container: Container) -> str:
    """The liveness probes' key of a replica's current start (stack.control.liveness.Probed.key)."""
    started = started_at(container)
    return f"{container.name}@{started}" if started else container.name


def write_targets(
    control_dir: Path, replicas: list[Container], address: Callable[[Container], str | None], port: int
) -> None:
    """Prometheus' scrape targets (file_sd): every running replica with its API, version and name."""
    targets: list[dict[str, Any]] = []
    for c in sorted(replicas, key=lambda c: c.name):
        at = address(c)
        if c.status != "running" or at is None:
            continue
        labels = {"api": c.labels["stack.api"], "version": c.labels.get("stack.version", ""), "replica": c.name}
        targets.append({"targets": [f"{at}:{port}"], "labels": labels})
    path = control_dir / TARGETS_DIR / "replicas.json"
    try:
        if json.loads(path.read_text()) == targets:
            return
    except (OSError, ValueError):
        pass
    write_json_atomic(path, targets)  # 0644: Prometheus does not run as root; nothing secret here
