"""The Compose controller's count of restarts: every new start of a container is one, whatever caused it.

Docker's own RestartCount counts only what its restart policy did, and starts over when the engine
restarts. The controller instead notes each container's StartedAt (`starts.json`): a new one is a
restart (Docker's policy after a crash or an OOM kill, the controller bringing back a killed replica,
the liveness probes replacing a stuck one, an engine restart), counted in `restarts.json` with its reason
as an event. In its first minute the controller also tells an engine restart from the rest: every
container it knew started again at about the same time, itself included.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from pathlib import Path

import docker
from docker.models.containers import Container

from serving.health import EXIT_STUCK
from stack.spec.units import format_memory
from stack.targets.compose.desired import Kill, count_restart, read_starts, record_event, record_kill, write_starts

LOGGER = logging.getLogger("stack.controller")
ENGINE_RESTART_WINDOW = 120.0  # seconds within which every container started again: the engine restarted
BOOT_WAIT = 60.0  # seconds the controller waits, at its start, for the engine to start every container again


class Restarts:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.starts: dict[str, str] = read_starts(state_dir)  # container name -> its last StartedAt seen
        self.exit_codes: dict[str, int] = {}  # container id -> its last exit code (the engine's `die` event)
        self.replacing: dict[str, str] = {}  # container id -> why the liveness probes restart it
        # The starts known before this controller started: an engine restart shows as all of them new.
        self.boot_starts: dict[str, str] | None = dict(self.starts)
        self.boot_deadline = time.monotonic() + BOOT_WAIT

    def observe(self, containers: list[Container]) -> None:
        """One pass: count the containers that started again since the last one."""
        self._count_starts(containers)

    def _count_starts(self, containers: list[Container]) -> None:
        """A container seen with a new StartedAt started again: one restart, with its reason as an event."""
        seen = {c.name: started_at(c) for c in containers if c.status == "running" and started_at(c)}
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
        times = sorted(stamp(started) for started in again.values())
        if not times[0] or times[-1] - times[0] > ENGINE_RESTART_WINDOW:
            return
        when = time.strftime("%H:%M:%S", time.localtime(times[0]))
        message = f"the Docker engine restarted: every container of the stack started again at {when}"
        LOGGER.warning(message)
        for api in sorted({c.labels["stack.api"] for c in containers if "stack.api" in c.labels}):
            record_event(self.state_dir, api, message, at=times[0])


def record_oom(client: docker.DockerClient, state_dir: Path, container_id: str) -> None:
    """The kernel killed a container for memory: record it with its limit, for `stack status`."""
    try:
        container = client.containers.get(container_id)
    except docker.errors.DockerException:
        return
    limit = int((container.attrs.get("HostConfig") or {}).get("Memory") or 0)
    reason = f"killed: out of memory (limit {format_memory(limit)})" if limit else "killed: out of memory"
    LOGGER.warning(f"{container.name}: {reason}")
    record_kill(state_dir, container.name, Kill(reason, time.time()))


def started_at(container: Container) -> str:
    """Docker's StartedAt of its current (or last) start."""
    return str(container.attrs["State"].get("StartedAt") or "")


def stamp(started: str) -> float:
    """StartedAt as unix time (0 when Docker does not say)."""
    head = started.rstrip("Z").partition(".")[0]
    try:
        return datetime.fromisoformat(head + "+00:00").timestamp() if head and not head.startswith("0001") else 0.0
    except ValueError:
        return 0.0


def finished_at(container: Container) -> float:
    """When the container last stopped (unix time; 0 when Docker does not say)."""
    text = str(container.attrs["State"].get("FinishedAt") or "")
    try:  # 2026-12-03T10:37:24.123456789Z: Python reads microseconds at most
        head = text.rstrip("Z").partition(".")[0]
        return datetime.fromisoformat(head + "+00:00").timestamp() if head and not head.startswith("0001") else 0.0
    except ValueError:
        return 0.0
