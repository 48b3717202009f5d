"""Scaling a Compose service from inside the stack, through the Docker API.

The autoscaler container has the engine's socket but no `docker compose`
binary, so it does what `docker compose up --scale` does, by hand and with
Compose's own bookkeeping: a new replica is a copy of a running one of the
same service (same image, environment, health check, limits, network alias
and every label, including the config hash) with the next
`com.docker.compose.container-number` and Compose's `<project>-<service>-<n>`
name. `docker compose ps` lists it, `stack down` removes it, and the next
`stack up` counts it instead of resetting it.

Scaling down stops the highest-numbered replicas, as Compose does, in the
background: `docker stop` waits out the replica's drain, and a replica that is
draining no longer counts.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
from docker.models.containers import Container

from stack.control.autoscale.config import ApiScaling
from stack.control.autoscale.scaler import Replicas
from stack.targets.compose.desired import Desired, read_desired, write_desired

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
NUMBER_LABEL = "com.docker.compose.container-number"
ALIVE = ("created", "running", "restarting", "paused")  # paused: frozen, the liveness probes replace it
# What a replica's configuration is made of; the rest of `docker inspect`'s Config
# (Hostname, attach flags, ...) belongs to the one container it came from.
COPIED_CONFIG = (
    "Image",
    "Cmd",
    "Entrypoint",
    "Env",
    "Labels",
    "Healthcheck",
    "WorkingDir",
    "User",
    "ExposedPorts",
    "Volumes",
    "StopSignal",
    "StopTimeout",
)


class ComposeScaler:
    def __init__(self, project: str, client: docker.DockerClient | None = None, state_dir: Path | None = None) -> None:
        self.project = project
        self.client = client or docker.from_env()
        self.state_dir = state_dir  # where the controller keeps each API's count (desired.json)
        self.draining: set[str] = set()  # container ids being stopped by a scale-down
        self.lock = threading.Lock()
        # Whether a replica serves: the controller's liveness probes say (stack.targets.compose.fleet).
        self.ready: Callable[[Container], bool] = lambda container: False

    async def replicas(self, api: ApiScaling) -> Replicas:
        return await asyncio.to_thread(self._replicas, api)

    async def scale(self, api: ApiScaling, count: int, reason: str) -> None:
        await asyncio.to_thread(self._scale, api, count)

    # -- in a worker thread -------------------------------------------------------------------

    def _alive(self, api: ApiScaling) -> list[Container]:
        found = self.client.containers.list(
            all=True,
            ignore_removed=True,
            filters={"label": [f"{PROJECT_LABEL}={self.project}", f"stack.api={api.name}"]},
        )
        with self.lock:
            return [c for c in found if c.status in ALIVE and c.id not in self.draining]

    def _replicas(self, api: ApiScaling) -> Replicas:
        alive = self._alive(api)
        versions = sorted({c.labels.get("stack.version", "") for c in alive})
        busy = f"rolling update in progress (versions {', '.join(versions)})" if len(versions) > 1 else ""
        ready = sum(1 for c in alive if self.ready(c))
        return Replicas(len(alive), ready, busy)

    def _scale(self, api: ApiScaling, count: int) -> None:
        alive = self._alive(api)
        if not alive:
            raise RuntimeError(f"API {api.name} has no running replica to copy; run `stack up` first")
        if count > len(alive):
            for _ in range(count - len(alive)):
                self.add(api.name, api.gpu_slots, alive)
        elif count < len(alive):
            # Replicas that are not serving go first, then the highest-numbered, as Compose does.
            order = sorted(alive, key=lambda c: (self.ready(c), -_number(c)))
            leaving = order[: len(alive) - count]
            for container in leaving:
                # To zero, the last one is only stopped: the activator starts it again (a cold start
                # without creating a container), and it is the copy for any more.
                self._remove_in_background(container, api.stop_timeout, keep=count == 0 and container is leaving[-1])
        versions = {c.labels.get("stack.version", "") for c in alive}
        if self.state_dir is not None and len(versions) == 1:
            # The count the controller keeps from now on (a killed replica is brought back to it).
            write_desired(self.state_dir, api.name, Desired(versions.pop(), count))

    def add(self, api: str, gpu_slots: list[list[str]], alive: list[Container]) -> None:
        """Start one more replica of `api`, a copy of the lowest-numbered one of `alive`."""
        template = min(alive, key=_number)
        service = template.labels[SERVICE_LABEL]
        device_ids = None
        if gpu_slots:
            # One service per GPU slot: take the first slot nobody holds.
            taken = {c.labels[SERVICE_LABEL] for c in alive}
            base = re.sub(r"-gpu\d+$", "", service)
            free = [i for i in range(len(gpu_slots)) if f"{base}-gpu{i}" not in taken]
            if not free:
                raise RuntimeError(f"API {api}: every GPU slot is taken")
            service, device_ids = f"{base}-gpu{free[0]}", gpu_slots[free[0]]
        number = self._next_number(service)
        config = _copy_config(template.attrs, service, number, device_ids)
        name = f"{self.project}-{service}-{number}"
        created = self.client.api.create_container_from_config(config, name)
        self.client.api.start(created["Id"])
        alive.append(self.client.containers.get(created["Id"]))

    def wake(self, api: str, gpu_slots: list[list[str]], stopping: set[str] | None = None) -> None:
        """One replica for an API scaled to zero: its stopped replica started again (no new container),
        else a copy of one still draining from the scale-down. `stopping`: containers told to stop."""
        found = self.client.containers.list(
            all=True, ignore_removed=True, filters={"label": [f"{PROJECT_LABEL}={self.project}", f"stack.api={api}"]}
        )
        with self.lock:
            leaving = self.draining | (stopping or set())
        if any(c.status in ALIVE and c.id not in leaving for c in found):
            return
        wanted = read_desired(self.state_dir).get(api) if self.state_dir else None
        same = [c for c in found if wanted is None or c.labels.get("stack.version") == wanted.version] or found
        stopped = [c for c in same if c.status in ("exited", "created")]
        if stopped:
            chosen = max(stopped, key=lambda c: c.attrs.get("Created", ""))
            chosen.start()
        elif draining := [c for c in same if c.status in ALIVE]:
            self.add(api, gpu_slots, draining)
            chosen = draining[0]
        else:
            raise RuntimeError(f"API {api} has no container left to start; run `stack up`")
        if self.state_dir is not None:
            write_desired(self.state_dir, api, Desired(chosen.labels.get("stack.version", ""), 1))

    def _next_number(self, service: str) -> int:
        every = self.client.containers.list(
            all=True,
            ignore_removed=True,
            filters={"label": [f"{PROJECT_LABEL}={self.project}", f"{SERVICE_LABEL}={service}"]},
        )
        return max((_number(c) for c in every), default=0) + 1

    def _remove_in_background(self, container: Container, timeout: float, keep: bool = False) -> None:
        with self.lock:
            self.draining.add(container.id)

        def stop() -> None:
            try:
                container.stop(timeout=int(timeout))
                if not keep:
                    container.remove()
            except docker.errors.NotFound:
                pass  # already gone (`stack down`, or removed by hand)
            finally:
                with self.lock:
                    self.draining.discard(container.id)

        threading.Thread(target=stop, name=f"stop-{container.name}", daemon=True).start()


def _copy_config(attrs: dict[str, Any], service: str, number: int, device_ids: list[str] | None) -> dict[str, Any]:
    config = {key: attrs["Config"][key] for key in COPIED_CONFIG if attrs["Config"].get(key) is not None}
    config["Labels"] = {**config["Labels"], SERVICE_LABEL: service, NUMBER_LABEL: str(number)}
    host = dict(attrs["HostConfig"])
    if device_ids is not None:
        host["DeviceRequests"] = [{**request, "DeviceIDs": device_ids} for request in host.get("DeviceRequests") or []]
    config["HostConfig"] = host
    # The service name is the replica's DNS alias on the stack network, as Compose sets it.
    config["NetworkingConfig"] = {
        "EndpointsConfig": {network: {"Aliases": [service]} for network in attrs["NetworkSettings"]["Networks"]}
    }
    return config


def _number(container: Container) -> int:
    return int(container.labels.get(NUMBER_LABEL, "0"))
