"""What the local supervisor process does beside keeping its fleet: the control API the `stack` CLI talks to
(a unix socket only its user opens), its state, pid and heartbeat files (so any shell finds the running
stack, and `stack status` tells when a killed one died), and the gateway and Prometheus kept running."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator

from stack.atomic import write_json_atomic, write_text_atomic
from stack.control.runtime import ControlPlane
from stack.targets.local.children import LocalServices
from stack.targets.local.control_api import ControlApi
from stack.targets.local.fleet import LocalFleet, write_keys
from stack.targets.local.state import LocalPaths

LOGGER = logging.getLogger("stack.targets.local")


class SupervisorDuties:
    def __init__(self, services: LocalServices, paths: LocalPaths) -> None:
        self.services = services
        self.paths = paths

    @contextlib.asynccontextmanager
    async def running(self, fleet: LocalFleet, plane: ControlPlane, stopping: asyncio.Event) -> AsyncIterator[None]:
        def stop() -> None:  # `stack down`: the control API's /shutdown
            stopping.set()
            fleet.wake.set()

        control = ControlApi(fleet, plane, self.services.notes, stop)
        runner = await control.start(self.paths.control_socket)
        self._write_state()
        heartbeat = asyncio.get_running_loop().create_task(self._heartbeat(fleet, stopping))
        try:
            yield
        finally:
            heartbeat.cancel()
            await runner.cleanup()
            self.paths.control_socket.unlink(missing_ok=True)

    async def _heartbeat(self, fleet: LocalFleet, stopping: asyncio.Event) -> None:
        """Every second: touch the heartbeat file (`stack status` tells when a killed stack died), put back a
        lost or corrupt state, pid or keys file, and start again a gateway or Prometheus that died."""
        while not stopping.is_set():
            with contextlib.suppress(OSError):
                self.paths.heartbeat.parent.mkdir(parents=True, exist_ok=True)
                self.paths.heartbeat.touch()
                self._repair_state()
                write_keys(self.paths, fleet.loaded, only_if_missing=True)
            try:
                await self.services.keep(fleet.router.routed)
            except Exception:  # the next second tries again; the reason is in the log
                LOGGER.exception("could not start the stack's gateway or Prometheus again")
            await asyncio.sleep(1.0)

    def _state(self) -> dict[str, object]:
        services = self.services
        return {
            "pid": os.getpid(),
            "control_socket": str(self.paths.control_socket),
            "metrics_port": services.control_port,
            "traefik_api_port": services.api_port,
            "traefik_metrics_port": services.metrics_port,
            "gateway_port": services.loaded.spec.gateway.port,
            "check_port": services.check_port,
            "project": services.loaded.spec.project,
            "spec_file": str(services.loaded.path),
            "prometheus_url": services.prometheus_url,
            "notes": services.notes,
        }

    def _repair_state(self) -> None:
        """Rewrite the pid and state files when they no longer say this (truncated, removed, another pid)."""
        try:
            pid_ok = self.paths.pid_file.read_text().strip() == str(os.getpid())
        except OSError:
            pid_ok = False
        try:
            state_ok = json.loads(self.paths.state_file.read_text()) == self._state()
        except (OSError, ValueError):
            state_ok = False
        if not (pid_ok and state_ok):
            LOGGER.info("state files lost or changed behind the supervisor's back: writing them again")
            self._write_state()

    def _write_state(self) -> None:
        self.paths.state_file.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.paths.pid_file, f"{os.getpid()}\n")
        write_json_atomic(self.paths.state_file, self._state())
