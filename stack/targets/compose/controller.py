"""The Compose stack's fleet: the one container that holds the Docker socket keeps the replicas.

It runs in the autoscaler service as the fleet of the stack's control plane
(stack.control.runtime: the autoscaler, canaries and activator beside it), and
keeps three things true whatever happens to the containers:

- **Routes.** Traefik reads its routes from a file (no socket in the gateway):
  every running replica that is not being stopped and whose /healthz says it is
  ready (the control plane's liveness probes, stack.control.liveness: Docker
  runs no health check), rewritten on the engine's `kill`, `die` and `start`
  events and as the probes' answers change, so a replica leaves the gateway the
  moment it is stopped, dies or stops answering.
- **Liveness.** A replica the probes find stuck is restarted at once (killed: it
  answered what it held), an unhealthy one gracefully (drained); the reason is
  an event (`events.jsonl`) and `health.json` tells `stack status` each
  replica's health.
- **Restarts.** Every new start of a container (Docker's StartedAt) is a
  restart, counted in `restarts.json`, which outlives the engine: after an
  engine restart every container starts again, the counts go on, and the engine
  restart is an event.
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
import contextlib
import json
import logging
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
from docker.models.containers import Container
from prometheus_client import Counter

from serving.health import EXIT_STUCK
from stack.atomic import write_json_atomic
from stack.autoscale.config import RoutedApi
from stack.control.liveness import Decision, Probed
from stack.control.runtime import ControlPlane
from stack.spec.units import format_memory
from stack.targets.compose.desired import (
    Kill,
    ReplicaHealth,
    count_restart,
    manual_apis,
    read_desired,
    read_events,
    read_starts,
    record_event,
    record_kill,
    write_health,
    write_starts,
)
from stack.targets.compose.scaler import ALIVE, PROJECT_LABEL, ComposeScaler

LOGGER = logging.getLogger("stack.controller")
TARGETS_DIR = "targets"  # under the control directory: Prometheus' file_sd
TICK = 1.0  # seconds between passes when no event wakes the controller
STARTING_TICK = 0.25  # while a replica starts: it is routed within this of its probe saying ready
CONFIRM = 2.0  # seconds a deficit must last before replicas are restored
EVENTS = ("start", "kill", "die", "stop", "destroy", "oom")
ENGINE_RESTART_WINDOW = 120.0  # seconds within which every container started again: the engine restarted
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
        self.start_errors: dict[str, str] = {}  # api -> why its replicas cannot start, as of the last pass
        self.plane: ControlPlane | None = None  # the control plane this fleet runs in (its routes, its metrics)
        self.restored: Counter | None = None
        self.was_ready: dict[str, str] = {}  # container id -> the start (StartedAt) in which it was ready
        self.exit_codes: dict[str, int] = {}  # container id -> its last exit code (the engine's `die` event)
        self.replacing: dict[str, str] = {}  # container id -> why the liveness probes restart it
        self.starts: dict[str, str] = read_starts(state_dir)  # container name -> its last StartedAt seen
        self.health_written: dict[str, ReplicaHealth] | None = None
        # The starts known before this controller started: an engine restart shows as all of them new.
        self.boot_starts: dict[str, str] | None = dict(self.starts)
        self.boot_deadline = time.monotonic() + 60.0
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
                        self._record_oom(event.get("id", ""))
                    if action == "die":
                        with contextlib.suppress(TypeError, ValueError):
                            code = (event.get("Actor") or {}).get("Attributes", {}).get("exitCode")
                            self.exit_codes[event.get("id", "")] = int(code)
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
        self._count_starts(containers)
        self._write_routes(replicas)
        self._write_health(replicas)
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
            started = _started(c)
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
        self.replacing[container.id] = decision.reason
        await asyncio.to_thread(self._write_routes, self.replicas)
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

    def events(self, api: str) -> list[str]:
        return read_events(self.state_dir, api)

    def wake_up_threadsafe(self) -> None:
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self.wake_up.set)

    # -- restarts, counted by the controller ----------------------------------------------------

    def _count_starts(self, containers: list[Container]) -> None:
        """A container seen with a new StartedAt started again: one restart, with its reason as an event."""
        seen = {c.name: _started(c) for c in containers if c.status == "running" and _started(c)}
        if self.boot_starts is not None:
            self._engine_restarted(containers, seen)
        changed = False
        for container in containers:
            name, started = container.name, seen.get(container.name)
            if started is None or self.starts.get(name) == started:
                continue
            changed = True
            before = self.starts.get(name)
            self.starts[name] = started
            if before is None:
                continue  # its first start
            count_restart(self.state_dir, name)
            api = container.labels.get("stack.api")
            if not api:
                continue
            why = self.replacing.pop(container.id, "")
            if not why:
                code = self.exit_codes.pop(container.id, None)
                why = "it exited" + (f" with code {code}" if code is not None else "")
                if code == EXIT_STUCK:
                    why += " (it found itself stuck and answered what it held)"
                record_event(self.state_dir, api, f"replica {name} restarted: {why}")
        for gone in [name for name in self.starts if name not in {c.name for c in containers}]:
            del self.starts[gone]
            changed = True
        if changed:
            write_starts(self.state_dir, self.starts)

    def _engine_restarted(self, containers: list[Container], seen: dict[str, str]) -> None:
        """In the first minute of the controller: once every container it knew before it started runs again, it
        tells whether they all started again at about the same time — the engine restarted (or the host
        rebooted), an event for every API."""
        assert self.boot_starts is not None
        existing = {c.name for c in containers}
        before = {name: started for name, started in self.boot_starts.items() if name in existing}
        waiting = [name for name in before if name not in seen]
        if waiting and time.monotonic() < self.boot_deadline:
            return  # the engine is still starting them
        self.boot_starts = None
        again = {name: seen[name] for name in before if name in seen and seen[name] != before[name]}
        if len(again) < 2 or len(again) < len(before):
            return
        times = sorted(_stamp(started) for started in again.values())
        if not times[0] or times[-1] - times[0] > ENGINE_RESTART_WINDOW:
            return
        when = time.strftime("%H:%M:%S", time.localtime(times[0]))
        message = f"the Docker engine restarted: every container of the stack started again at {when}"
        LOGGER.warning(message)
        for api in sorted({c.labels["stack.api"] for c in containers if "stack.api" in c.labels}):
            record_event(self.state_dir, api, message, at=times[0])

    def _write_health(self, replicas: list[Container]) -> None:
        """What the probes say of each running replica, for `stack status` and `stack up` on the host."""
        if self.plane is None:
            return
        table = {}
        for c in replicas:
            if c.status != "running":
                continue
            health = self.plane.liveness.of(_key(c))
            word = "starting" if health is None else health.word
            if c.id in self.replacing:
                word = "stuck" if health is None or health.status != "unhealthy" else "unhealthy"
            table[c.name] = ReplicaHealth(
                c.id[:12],
                _started(c),
                word,
                self.replacing.get(c.id) or (health.reason if health else ""),
                health.keys if health else "",
            )
        if table != self.health_written:
            write_health(self.state_dir, table)
            self.health_written = table

    def _write_routes(self, replicas: list[Container]) -> None:
        assert self.plane is not None
        table: dict[str, list[str]] = {}
        for api in self.apis:
            servers = sorted(
                f"http://{address}:{self.port}"
                for c in replicas
                if c.labels["stack.api"] == api.name and self.serving(c) and (address := self._address(c))
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
                and c.status == "restarting"
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


def _started(container: Container) -> str:
    """Docker's StartedAt of its current (or last) start."""
    return str(container.attrs["State"].get("StartedAt") or "")


def _stamp(started: str) -> float:
    """StartedAt as unix time (0 when Docker does not say)."""
    head = started.rstrip("Z").partition(".")[0]
    try:
        return datetime.fromisoformat(head + "+00:00").timestamp() if head and not head.startswith("0001") else 0.0
    except ValueError:
        return 0.0


def _key(container: Container) -> str:
    """The liveness probes' key of a replica's current start (stack.control.liveness.Probed.key)."""
    started = _started(container)
    return f"{container.name}@{started}" if started else container.name
