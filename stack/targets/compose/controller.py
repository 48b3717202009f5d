"""The Compose stack's fleet: the one container that holds the Docker socket keeps the replicas.

It runs in the autoscaler service as the fleet of the stack's control plane
(stack.control.runtime: the autoscaler, canaries and activator beside it), and
keeps three things true whatever happens to the containers:

- **Routes.** Traefik reads its routes from a file (no socket in the gateway):
  every running, healthy replica that is not being stopped, rewritten on the
  engine's `kill`, `die`, `start` and `health_status` events, so a replica
  leaves the gateway the moment it is stopped or dies.
- **Scrape targets.** Prometheus reads its targets from a file (no socket, not
  root): every running replica with its API, version and name.
- **The stack's own containers.** The gateway and Prometheus, killed or stopped
  behind the stack's back (which Docker's restart policy ignores), are started
  again within seconds while the stack is up (`desired.json` holds a count).
- **Counts.** Each API's count (`desired.json` in the state directory: what
  `stack up`, `stack scale` and the autoscaler last set) is restored when a
  replica is killed, stopped or removed behind our back — `docker kill`, an
  OOM kill, `docker rm -f` — which Docker's restart policy ignores. A dead
  replica is started again (same name, same number); a removed one is copied
  from a living one. A deficit must last `CONFIRM` seconds first, so a scale
  in progress is never doubled; an API in a rolling update (two versions, or
  no count written) is left to `stack up`. An OOM kill is recorded with the
  container's memory limit (`kills.json`), for `stack status`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import docker
from docker.models.containers import Container
from prometheus_client import Counter

from stack.atomic import write_json_atomic
from stack.autoscale.config import RoutedApi
from stack.control.runtime import ControlPlane
from stack.spec.units import format_memory
from stack.targets.compose.desired import Kill, count_restart, manual_apis, read_desired, record_kill
from stack.targets.compose.scaler import ALIVE, PROJECT_LABEL, ComposeScaler

LOGGER = logging.getLogger("stack.controller")
TARGETS_DIR = "targets"  # under the control directory: Prometheus' file_sd
TICK = 1.0  # seconds between passes when no event wakes the controller
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # replicas are never behind a proxy
STARTING_TICK = 0.25  # while a replica starts: it is routed within this of answering /readyz
CONFIRM = 2.0  # seconds a deficit must last before replicas are restored
EVENTS = ("start", "kill", "die", "stop", "destroy", "health_status", "oom")
KEPT_ROLES = ("gateway", "prometheus", "dashboard")  # the stack's containers the controller starts again (not itself)


class ComposeController:
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
        self.short_since: dict[str, float] = {}  # api -> when its deficit was first seen
        self.wake_up = asyncio.Event()
        self.ready_urls: dict[str, list[str]] = {}  # api -> serving replicas, as of the last pass
        self.starting_urls: dict[str, list[str]] = {}  # api -> running replicas, healthy or not yet
        self.session: aiohttp.ClientSession | None = None
        self.ready_early: set[str] = set()  # starting containers whose /readyz already answers 200
        self.starting = False  # a replica is starting: pass more often
        self.start_errors: dict[str, str] = {}  # api -> why its replicas cannot start, as of the last pass
        self.plane: ControlPlane | None = None  # the control plane this fleet runs in (its routes, its metrics)
        self.restored: Counter | None = None

    # -- the Fleet of the control plane ------------------------------------------------------------

    def manual(self, api: str) -> bool:
        return api in manual_apis(self.state_dir)

    async def run(self, plane: ControlPlane, stopping: asyncio.Event) -> None:
        self.plane = plane
        self.restored = Counter(
            "stack_controller_replicas_restored",
            "Replicas started again or copied because one was killed, stopped or removed behind the stack's back.",
            ["api"],
            registry=plane.registry,
        )
        loop = asyncio.get_running_loop()
        threading.Thread(target=self._watch_events, args=(loop,), name="docker-events", daemon=True).start()
        while not stopping.is_set():
            self.wake_up.clear()
            try:
                await asyncio.to_thread(self.tick)
            except docker.errors.DockerException as exc:
                LOGGER.warning(f"cannot read the stack's containers: {exc}")
            except Exception:
                LOGGER.exception("controller pass failed; the next one comes anyway")
            waiters = [asyncio.ensure_future(self.wake_up.wait()), asyncio.ensure_future(stopping.wait())]
            timeout = STARTING_TICK if self.starting else TICK
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
                        self._record_oom(event.get("id", ""))
                    with self.ids_lock:
                        if action in ("kill", "die"):  # told to stop, or dead: out of the routes now
                            self.stopping_ids.add(event.get("id", ""))
                        elif action == "start":  # (re)started: routed again once healthy
                            self.stopping_ids.discard(event.get("id", ""))
                    loop.call_soon_threadsafe(self.wake_up.set)
            except Exception as exc:  # the engine restarted, the socket closed: try again
                LOGGER.warning(f"Docker event stream lost ({exc}); reopening")
            time.sleep(1)

    def _record_oom(self, container_id: str) -> None:
        try:
            container = self.client.containers.get(container_id)
        except docker.errors.DockerException:
            return
        limit = int((container.attrs.get("HostConfig") or {}).get("Memory") or 0)
        reason = f"killed: out of memory (limit {format_memory(limit)})" if limit else "killed: out of memory"
        LOGGER.warning(f"{container.name}: {reason}")
        record_kill(self.state_dir, container.name, Kill(reason, time.time()))

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
        # Docker checks health every 2 s; a woken replica is asked itself, so a cold start
        # waits for the model load, not for the next health check.
        for url in self.starting_urls.get(api, []):
            try:
                async with self._probe_session().get(url + "/readyz", timeout=aiohttp.ClientTimeout(total=0.5)) as r:
                    if r.status == 200:
                        return url
            except (aiohttp.ClientError, TimeoutError):
                continue
        return None

    def _probe_session(self) -> aiohttp.ClientSession:
        if self.session is None or self.session.closed:
            self.session = aiohttp.ClientSession()
        return self.session

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
        self._probe_starting(replicas)
        self._write_routes(replicas)
        self._write_targets(replicas)
        self._restore(replicas)
        self._keep_roles(containers)

    def _keep_roles(self, containers: list[Container]) -> None:
        """Start the gateway or Prometheus again when it was killed or stopped (not during `stack down`,
        which empties desired.json first; not in the instant a `stack up` recreates it)."""
        if not read_desired(self.state_dir):
            return
        for container in containers:
            role = container.labels.get("stack.role", "")
            if role not in KEPT_ROLES or container.status not in ("exited", "dead"):
                continue
            if time.time() - _finished_at(container) < CONFIRM:
                continue
            LOGGER.warning(f"the stack's {role} ({container.name}) is {container.status}; starting it again")
            try:
                container.start()
            except docker.errors.DockerException as exc:
                LOGGER.warning(f"cannot start {container.name} again: {exc}")
                continue
            count_restart(self.state_dir, container.name)

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

    def _serving(self, container: Container) -> bool:
        if container.status != "running" or container.id in self.stopping_ids or container.id in self.scaler.draining:
            return False
        health = _health(container)
        # Docker's first health check comes 2 s after the start, then every 2 s: a new replica
        # that answers the same probe (/readyz) sooner is routed as soon as it does.
        return health == "healthy" or (health == "starting" and container.id in self.ready_early)

    def _probe_starting(self, replicas: list[Container]) -> None:
        """Ask each starting replica's /readyz directly (from the controller's worker thread)."""
        ready, starting = set(), False
        for c in replicas:
            if c.status != "running" or _health(c) != "starting" or c.id in self.stopping_ids:
                continue
            starting = True
            address = self._address(c)
            if address is None:
                continue
            try:
                with DIRECT.open(f"http://{address}:{self.port}/readyz", timeout=0.5) as answer:
                    if answer.status == 200:
                        ready.add(c.id)
            except (OSError, ValueError):
                continue
        self.ready_early, self.starting = ready, starting

    def _write_routes(self, replicas: list[Container]) -> None:
        assert self.plane is not None
        table: dict[str, list[str]] = {}
        for api in self.apis:
            servers = sorted(
                f"http://{address}:{self.port}"
                for c in replicas
                if c.labels["stack.api"] == api.name and self._serving(c) and (address := self._address(c))
            )
            self.ready_urls[api.name] = servers
            self.starting_urls[api.name] = [
                f"http://{address}:{self.port}"
                for c in replicas
                if c.labels["stack.api"] == api.name
                and c.status == "running"
                and c.id not in self.stopping_ids
                and (address := self._address(c))
            ]
            failing = [
                c
                for c in replicas
                if c.labels["stack.api"] == api.name
                and c.id not in self.stopping_ids
                and (c.status == "restarting" or (c.status == "running" and _health(c) == "unhealthy"))
            ]
            if failing:
                code = failing[0].attrs["State"].get("ExitCode", 0)
                self.start_errors[api.name] = f"replica {failing[0].name} keeps failing (last exit code {code})"
            else:
                self.start_errors.pop(api.name, None)
            table[api.name] = servers
        if self.plane.routes.publish(table):
            LOGGER.info("routes: " + "; ".join(f"{api} -> {len(urls)} replica(s)" for api, urls in table.items()))

    def _write_targets(self, replicas: list[Container]) -> None:
        targets: list[dict[str, Any]] = []
        for c in sorted(replicas, key=lambda c: c.name):
            address = self._address(c)
            if c.status != "running" or address is None:
                continue
            labels = {"api": c.labels["stack.api"], "version": c.labels.get("stack.version", ""), "replica": c.name}
            targets.append({"targets": [f"{address}:{self.port}"], "labels": labels})
        path = self.control_dir / TARGETS_DIR / "replicas.json"
        try:
            if json.loads(path.read_text()) == targets:
                return
        except (OSError, ValueError):
            pass
        write_json_atomic(path, targets)  # 0644: Prometheus does not run as root; nothing secret here

    def _restore(self, replicas: list[Container]) -> None:
        desired = read_desired(self.state_dir)
        now = time.monotonic()
        for api in self.apis:
            want = desired.get(api.name)
            mine = [c for c in replicas if c.labels["stack.api"] == api.name]
            alive = [c for c in mine if c.status in ALIVE and c.id not in self.scaler.draining]
            if want is None or any(c.labels.get("stack.version") != want.version for c in alive):
                self.short_since.pop(api.name, None)  # not ours to keep now: a rolling update, or `stack down`
                continue
            missing = want.replicas - len(alive)
            if missing <= 0:
                self.short_since.pop(api.name, None)
                continue
            since = self.short_since.setdefault(api.name, now)
            if now - since < CONFIRM:
                continue
            self.short_since.pop(api.name, None)
            dead = [c for c in mine if c.status in ("exited", "dead") and c.labels.get("stack.version") == want.version]
            for container in dead[:missing]:
                LOGGER.info(f"{api.name}: replica {container.name} is {container.status}; starting it again")
                container.start()
                count_restart(self.state_dir, container.name)
                self._count_restored(api.name)
            for _ in range(missing - len(dead[:missing])):
                if not alive:
                    LOGGER.warning(f"{api.name}: no replica left to copy; `stack up` brings it back")
                    break
                LOGGER.info(f"{api.name}: {len(alive)}/{want.replicas} replicas; adding one")
                self.scaler.add(api.name, api.gpu_slots, alive)
                self._count_restored(api.name)

    def _count_restored(self, api: str) -> None:
        if self.restored is not None:
            self.restored.labels(api).inc()


def _finished_at(container: Container) -> float:
    """When the container last stopped (unix time; 0 when Docker does not say)."""
    text = str(container.attrs["State"].get("FinishedAt") or "")
    try:  # 2026-12-03T10:37:24.123456789Z: Python reads microseconds at most
        head = text.rstrip("Z").partition(".")[0]
        return datetime.fromisoformat(head + "+00:00").timestamp() if head and not head.startswith("0001") else 0.0
    except ValueError:
        return 0.0


def _health(container: Container) -> str:
    return str((container.attrs["State"].get("Health") or {}).get("Status", ""))
