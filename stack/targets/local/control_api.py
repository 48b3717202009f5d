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

from stack.control.autoscale.config import config_of
from stack.control.runtime import ControlPlane
from stack.errors import StackError, UnknownApi
from stack.plan.gpus import read_placement
from stack.plan.versions import project_digest
from stack.spec import SpecError, load_spec
from stack.status import ApiStatus, Observed, ReplicaState, ReplicaStatus, StackStatus, api_phase
from stack.targets.base import check_scale
from stack.targets.local.apis import ApiState
from stack.targets.local.fleet import LocalFleet

KEYS_TIMEOUT = 15.0  # seconds `stack up` waits for every replica to apply new keys


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
            error_replica=state.rollback_replica or state.error_replica,
            rolled_back=state.rolled_back,
            restarts=state.restarts,
            autoscaled=state.spec.autoscaled and not state.manual,
            autoscaler=self.plane.status().get(name),
            affinity=self.plane.affinity().get(name),
            min_replicas=bounds.min_replicas,
            max_replicas=bounds.max_replicas,
            events=list(state.events),
            replicas=[
                ReplicaStatus(
                    id=r.id,
                    state=ReplicaState.STUCK if r.state == ReplicaState.READY and self.fleet.suspect(r) else r.state,
                    version=r.version,
                    health=self._health(r.id),
                    pid=r.proc.pid,
                    port=r.port,
                    uptime_s=round(now - r.started, 1),
                    gpu=r.gpu,
                    last_event=r.replaced,
                )
                for r in state.replicas
            ],
            gpu_slots=len(state.slots),
        )

    def _health(self, replica: str) -> str:
        health = self.plane.liveness.of(replica)
        return health.word if health is not None else ""

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
        """`stack up` on a running stack: load stack.yaml again, `${VAR}` from the environment of the `stack up`
        that asked (never the supervisor's own), roll to it, and answer once every ready replica applies the
        API keys written (a revoked key refused, a new one working, when `stack up` returns)."""
        fleet = self.fleet
        body = await request.json() if request.can_read_body else {}
        environ = body.get("environment") if isinstance(body, dict) else None
        if not isinstance(environ, dict) or not all(isinstance(v, str) for v in environ.values()):
            environ = {}
        try:
            loaded = await asyncio.to_thread(load_spec, fleet.loaded.path, True, environ)
        except SpecError as exc:
            return _error(exc, 400)
        slots = read_placement(fleet.paths.placement).slot_devices()  # `stack up` placed them anew
        fleet.apply_spec(loaded, await asyncio.to_thread(project_digest, loaded), slots=slots)
        self.plane.configure(config_of(loaded, slots, versions=fleet.versions()))
        pending = await self._keys_applied(KEYS_TIMEOUT)
        return web.json_response({"ok": True, "keys_pending": pending})

    async def _keys_applied(self, timeout: float) -> list[str]:
        """Wait until every ready replica reports the keys file's generation; the replicas that did not."""
        generation = keys_generation(self.fleet.paths.api_keys)
        liveness = self.plane.liveness
        liveness.ask_now()
        deadline = time.monotonic() + timeout
        while True:
            behind = [
                r.id
                for state in self.fleet.apis.values()
                for r in state.ready()
                if (health := liveness.of(r.id)) is None or health.keys != generation
            ]
            if not behind or time.monotonic() > deadline:
                return behind
            await asyncio.sleep(0.05)

    async def _shutdown(self, request: web.Request) -> web.Response:
        self.stop()
        return web.json_response({"ok": True})


def keys_generation(path: Path) -> str:
    """The generation of a keys file as a replica reports it (serving.keys): "" when there is none."""
    try:
        found = path.stat()
    except OSError:
        return ""
    return f"{found.st_ino}-{found.st_mtime_ns}"


def _error(exc: StackError, status: int) -> web.Response:
    return web.json_response({"error": str(exc)}, status=status)
