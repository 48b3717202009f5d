"""The Compose controller's count keeper: what Docker's restart policy ignores, brought back.

Each API's count (`desired.json` in the state directory: what `stack up`, `stack scale` and the
autoscaler last set) is restored when a replica is killed, stopped or removed behind the stack's back —
`docker kill`, an OOM kill, `docker rm -f`. A dead replica is started again (same name, same number); a
removed one is copied from a living one. A deficit must last `CONFIRM` seconds first, so a scale in
progress is never doubled; an API in a rolling update (two versions, or no count written) is left to
`stack up`. The gateway, Prometheus and the dashboard, killed or stopped, are started again too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import docker
from docker.models.containers import Container

from stack.control.autoscale.config import RoutedApi
from stack.targets.compose.desired import read_desired
from stack.targets.compose.restarts import finished_at
from stack.targets.compose.scaler import ALIVE, ComposeScaler

LOGGER = logging.getLogger("stack.controller")
CONFIRM = 2.0  # seconds a deficit must last before replicas are restored
KEPT_ROLES = ("gateway", "prometheus", "dashboard")  # the stack's containers kept running (not the controller)


class Keeper:
    def __init__(
        self, apis: list[RoutedApi], state_dir: Path, scaler: ComposeScaler, restored: Callable[[str], None]
    ) -> None:
        self.apis = apis
        self.state_dir = state_dir
        self.scaler = scaler
        self.restored = restored  # counts one replica brought back for an API (the controller's metric)
        self.short_since: dict[str, float] = {}  # api -> when its deficit was first seen

    def keep(self, containers: list[Container], replicas: list[Container]) -> None:
        self._restore(replicas)
        self._keep_roles(containers)

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
                self.restored(api.name)
            for _ in range(missing - len(dead[:missing])):
                if not alive:
                    LOGGER.warning(f"{api.name}: no replica left to copy; `stack up` brings it back")
                    break
                LOGGER.info(f"{api.name}: {len(alive)}/{want.replicas} replicas; adding one")
                self.scaler.add(api.name, api.gpu_slots, alive)
                self.restored(api.name)

    def _keep_roles(self, containers: list[Container]) -> None:
        """Start the gateway or Prometheus again when it was killed or stopped (not during `stack down`,
        which empties desired.json first; not in the instant a `stack up` recreates it)."""
        if not read_desired(self.state_dir):
            return
        for container in containers:
            role = container.labels.get("stack.role", "")
            if role not in KEPT_ROLES or container.status not in ("exited", "dead"):
                continue
            if time.time() - finished_at(container) < CONFIRM:
                continue
            LOGGER.warning(f"the stack's {role} ({container.name}) is {container.status}; starting it again")
            try:
                container.start()
            except docker.errors.DockerException as exc:
                LOGGER.warning(f"cannot start {container.name} again: {exc}")
