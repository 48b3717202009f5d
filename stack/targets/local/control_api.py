"""The local supervisor's control API, on a unix socket only its user can open.

GET  /status    the stack's StackStatus as JSON (stack.status: the same document `stack status --json` prints)
POST /scale     {"api", "replicas", "force"}: `stack scale`; {"autoscaler": true}: an outside autoscaler
POST /reload    stack.yaml changed: roll every API to it (`stack up` on a running stack)
POST /shutdown  drain and stop everything (`stack down`)
GET  /metrics   the controller's own metrics (also on 127.0.0.1 TCP, for Prometheus)
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from stack.autoscale.config import config_of
from stack.control.runtime import ControlPlane
from stack.errors import StackError, UnknownApi
from stack.plan.gpus import read_placement
from stack.plan.render import project_digest
from stack.spec import SpecError, load_spec
from stack.status import ApiStatus, Observed, ReplicaStatus, StackStatus, api_phase
from stack.targets.base import check_scale
from stack.targets.local.fleet import ApiState, LocalFleet


class ControlApi:
    def __init__(self, fleet: LocalFleet, plane: ControlPlane, notes: list[str], stop: Callable[[], None]) -> None:
        self.fleet = fleet
        self.plane = plane
        self.notes = notes  # for `stack up` and `stack status`: e.g. a port that moved
        self.stop = stop

    async def start(self, socket_path: Path) -> web.AppRunner:
        app = web.Application()
        app.router.add_get("/status", self._status)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/scale", self._scale)
        app.router.add_post("/reload", self._reload)
        app.router.add_post("/shutdown", self._shutdown)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        socket_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        socket_path.parent.chmod(0o700)
        socket_path.unlink(missing_ok=True)
        old_umask = os.umask(0o177)  # the socket is created 0600, never briefly open to others
        try:
            await web.UnixSite(runner, str(socket_path)).start()
        finally:
            os.umask(old_umask)
        return runner

    def status(self) -> StackStatus:
        fleet = self.fleet
        apis = [self._api_status(name, state) for name, state in sorted(fleet.apis.items())]
        gateway = fleet.loaded.spec.gateway.port
        return StackStatus(
            fleet.loaded.spec.project,
            "local",
            gateway,
            apis,
            self.notes,
            os.getpid(),
            components=fleet.services.components(),
        )

    def _api_status(self, name: str, state: ApiState) -> ApiStatus:
        ready = state.serving(self.fleet.router.serving_urls(name))
        seen = Observed(
            desired=state.desired,
            ready=len(ready),
            alive=len(state.replicas),
            failing=state.failed_slot is not None,
            updating=name in self.fleet.updating,
        )
        now = time.monotonic()
        bounds = state.spec.autoscaling
        return ApiStatus(
            name=name,
            status=api_phase(seen),
            ready=len(ready),
            desired=state.desired,
            endpoint=state.spec.endpoint,
            version=state.version,
            error=state.error,
            error_replica=state.error_replica,
            restarts=state.restarts,
            autoscaled=state.spec.autoscaled and not state.manual,
            autoscaler=self.plane.status().get(name),
            min_replicas=bounds.min_replicas,
            max_replicas=bounds.max_replicas,
            events=list(state.events),
            replicas=[
                ReplicaStatus(
                    id=r.id,
                    state=r.state,
                    version=r.version,
                    pid=r.proc.pid,
                    port=r.port,
                    uptime_s=round(now - r.started, 1),
                    gpu=r.gpu,
                )
                for r in state.replicas
            ],
            gpu_slots=len(state.slots),
        )

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response(self.status().to_dict())

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.plane.metrics_text(), content_type="text/plain")

    async def _scale(self, request: web.Request) -> web.Response:
        body = await request.json()
        name, replicas = str(body.get("api", "")), int(body["replicas"])
        fleet = self.fleet
        if name not in fleet.apis:
            return _error(UnknownApi(name, sorted(fleet.apis)), 404)
        state = fleet.apis[name]
        if body.get("autoscaler"):  # an autoscaler in another process (stack.targets.local.scaler.SupervisorScaler)
            bounds = state.spec.autoscaling
            wanted = min(max(replicas, bounds.min_replicas), bounds.max_replicas)
            fleet.set_desired(name, wanted, f"autoscaler: {state.desired} -> {wanted}: {body.get('reason', '')}")
            return web.json_response({"ok": True})
        force = bool(body.get("force"))
        try:
            check_scale(fleet.loaded, name, replicas, force, "stack up", manual=state.manual)
        except StackError as exc:
            owned = state.spec.autoscaled and not state.manual and not force  # the autoscaler's: a conflict
            return _error(exc, 409 if owned else 400)
        fleet.set_desired(name, replicas, f"scaled to {replicas} ({body.get('reason', 'stack scale')})", by_hand=force)
        return web.json_response({"ok": True})

    async def _reload(self, request: web.Request) -> web.Response:
        fleet = self.fleet
        try:
            loaded = await asyncio.to_thread(load_spec, fleet.loaded.path)
        except SpecError as exc:
            return _error(exc, 400)
        slots = read_placement(fleet.paths.placement).slot_devices()  # `stack up` placed them anew
        fleet.apply_spec(loaded, await asyncio.to_thread(project_digest, loaded), slots=slots)
        self.plane.configure(config_of(loaded, slots, versions=fleet.versions()))
        return web.json_response({"ok": True})

    async def _shutdown(self, request: web.Request) -> web.Response:
        self.stop()
        return web.json_response({"ok": True})


def _error(exc: StackError, status: int) -> web.Response:
    return web.json_response({"error": str(exc)}, status=status)
