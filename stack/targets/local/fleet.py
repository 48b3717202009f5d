"""The local target's fleet: every API's replica processes, reconciled five times a second.

Each API has a desired count; a pass reaps exited replicas (a start-up failure
backs off, a crash is replaced: each replica slot keeps its own count and back-off,
capped at 30 s and retried for good; a slot failing three times in a row puts the
API in `error`), asks starting ones for /readyz, and takes one
rolling-update step (stack.targets.rollout) toward the desired count of the
current version. A replica joins the gateway only once ready and leaves it
(confirmed through Traefik's API) before it is sent SIGTERM.

A rolling update that fails — a new replica failing to start (or crashing) three
times in a row, or the new version not ready within `update.progress_deadline` —
is rolled back: the new replicas go, the API is on its old version again, the
autoscaler resumes and `stack status` says why. Locally a replica runs the files
on disk, so an old version's replica cannot be started again once the files
changed: an old replica is therefore retired only once a new one is ready
(`max_unavailable` counts as 0, except for a GPU API whose slots are all taken),
and a failed rollout leaves the old version at its count.

Ready replicas are asked by the control plane's liveness probes (stack.control.liveness): one that
stops answering leaves the gateway, and one found stuck or unhealthy is replaced (`replace`); a
replica that found itself stuck and exited (serving.health's exit code) is replaced with its reason.

The fleet is also what the control plane's autoscaler scales (`Scaler`) and
what its activator wakes (`Waker`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from contextlib import AbstractAsyncContextManager
from typing import Protocol

import aiohttp

from stack.atomic import write_text_atomic
from stack.control.autoscale.config import ApiScaling
from stack.control.autoscale.scaler import Replicas
from stack.control.liveness import Decision, Liveness, Probed
from stack.control.routing import FileRouteSink
from stack.control.runtime import ControlPlane
from stack.plan.serving import api_keys_text
from stack.plan.versions import api_version
from stack.spec import LoadedSpec
from stack.targets.local.apis import READY, STARTING, ApiState, Replica
from stack.targets.local.children import LocalServices
from stack.targets.local.processes import ReplicaProcesses
from stack.targets.local.router import LocalRouter
from stack.targets.local.state import LocalPaths
from stack.targets.rollout import Fleet, next_step
from stack.tls import tls_files

LOGGER = logging.getLogger("stack.targets.local")
TICK = 0.2  # seconds between reconcile passes
MEMORY_EVERY = 0.5  # seconds between reads of the replicas' resident memory (compute.mem)


class Duties(Protocol):
    def running(
        self, fleet: LocalFleet, plane: ControlPlane, stopping: asyncio.Event
    ) -> AbstractAsyncContextManager[None]: ...


class LocalFleet:
    def __init__(
        self,
        loaded: LoadedSpec,
        paths: LocalPaths,
        services: LocalServices,
        session: aiohttp.ClientSession,
        routes: FileRouteSink,
        duties: Duties,
    ) -> None:
        self.loaded = loaded
        self.paths = paths
        self.services = services
        self.duties = duties  # what the supervisor does beside keeping the fleet (stack.targets.local.duties)
        self.router = LocalRouter(services, session, routes, self.routable)
        self.routes = routes
        self.apis: dict[str, ApiState] = {}
        self.updating: set[str] = set()  # APIs in a rolling update
        self.wake = asyncio.Event()  # set when a child exits or a count changes: reconcile now
        self.processes = ReplicaProcesses(paths, self.router, self.wake, services.errors_url)
        self.memory_checked = 0.0
        self.liveness: Liveness | None = None  # the control plane's probes, once it runs

    def routable(self) -> dict[str, set[str]]:
        """API -> the URLs of its ready replicas that answer their probes: what the gateway should route now."""
        routed = {}
        for name, api in self.apis.items():
            routed[name] = {r.url for r in api.ready() if not self.suspect(r)} or {
                # none answers its probes in time, but none is stuck either: route them all (Liveness.only_silent)
                r.url
                for r in api.ready()
                if self.liveness is not None and self.liveness.only_silent(r.id)
            }
        return routed

    def suspect(self, replica: Replica) -> bool:
        """Its probes say no request should go to it (silent, stuck, unhealthy or not ready)."""
        health = self.liveness.of(replica.id) if self.liveness is not None else None
        return health is not None and not health.routable

    def ready_urls(self, api: str) -> list[str]:
        return [r.url for r in self.apis[api].ready()] if api in self.apis else []

    def versions(self) -> dict[str, str]:
        return {name: state.version for name, state in self.apis.items()}

    # -- the spec -----------------------------------------------------------------------------

    def apply_spec(
        self, loaded: LoadedSpec, digest: str, first: bool = False, slots: dict[str, list[list[str]]] | None = None
    ) -> None:
        """`slots`: each GPU API's replica slots, as `stack up` placed them on this host's GPUs."""
        self.loaded = self.services.loaded = loaded
        self.routes.tls = tls_files(loaded.root, loaded.spec.gateway.tls)
        write_keys(self.paths, loaded)
        for api in loaded.spec.apis:
            version = api_version(api, digest)
            current = self.apis.get(api.name)
            if current is None:
                self.apis[api.name] = ApiState(
                    api, version, api.autoscaling.initial, slots=(slots or {}).get(api.name, [])
                )
                if not first:
                    self.apis[api.name].event("added")
                continue
            current.slots = (slots or {}).get(api.name, [])
            current.rolled_back, current.rollback_replica = "", ""
            if current.version != version:
                current.event(f"rolling update to version {version}")
                current.clear_failures()
                if api.name not in self.updating:  # a rollout superseded keeps the version it started from
                    current.previous = (current.spec, current.version)
                current.rollout_started = time.monotonic()
                self.updating.add(api.name)
            current.spec, current.version = api, version
            current.manual = False  # `stack up` hands the API back to the autoscaler
            current.desired = min(max(current.desired, api.autoscaling.min_replicas), api.autoscaling.max_replicas)
        for name in [n for n in self.apis if n not in {a.name for a in loaded.spec.apis}]:
            self.apis[name].desired = 0
            self.apis[name].event("removed from stack.yaml; draining")
        self.wake.set()

    # -- the reconcile loop ---------------------------------------------------------------------

    async def reconcile(self, stopping: asyncio.Event) -> None:
        try:
            while not stopping.is_set():
                self.wake.clear()
                await self._tick()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), TICK)
        finally:
            LOGGER.info("shutting down")
            await self.processes.shutdown(self.apis.values())

    async def _tick(self) -> None:
        now = time.monotonic()
        if now - self.memory_checked >= MEMORY_EVERY:
            self.memory_checked = now
            self.processes.enforce_memory(self.apis.values())
        for state in list(self.apis.values()):
            self.processes.reap(state)
            self._mark_ready(state)
            await self._step(state)
        await self.router.sync()
        spec_names = {a.name for a in self.loaded.spec.apis}
        for name in [n for n, s in self.apis.items() if s.desired == 0 and not s.replicas and n not in spec_names]:
            del self.apis[name]

    def _mark_ready(self, state: ApiState) -> None:
        """A starting replica whose probe (stack.control.liveness) says it is ready joins the gateway."""
        for replica in [r for r in state.replicas if r.state == STARTING]:
            if self.liveness is not None and self.liveness.ready(replica.id):
                state.became_ready(replica)

    async def _step(self, state: ApiState) -> None:
        failure = state.rollout_failure(state.spec.name in self.updating)
        if failure is not None:
            for leaving in state.roll_back(*failure):
                self.processes.drain(state, leaving, "its rollout was rolled back")
            self.updating.discard(state.spec.name)
            self.wake.set()
        live = state.live()
        new = [r for r in live if r.version == state.version]
        old = [r for r in live if r.version != state.version]
        surge, unavailable = state.spec.update.resolve(max(state.desired, 1))
        if not state.slots and unavailable:
            # An old version's replica cannot start again here (the files on disk are the new version's):
            # keep every old one until a new one is ready, surging instead.
            surge, unavailable = max(surge, 1), 0
        fleet = Fleet(
            new_ready=sum(r.state == READY for r in new),
            new_starting=sum(r.state == STARTING for r in new),
            old_ready=sum(r.state == READY for r in old),
            old_starting=sum(r.state == STARTING for r in old),
        )
        step = next_step(fleet, state.desired, surge, unavailable)
        for _ in range(step.start):
            if state.slots and not state.free_slots():
                state.event(f"every GPU slot ({len(state.slots)}) holds a replica: no more start")
                break
            slot = state.next_slot()
            if slot is None:  # the free slots are backing off
                break
            await self.processes.start(self.loaded, state, slot)
        # Old versions: not-ready ones first, ready ones only while enough others serve.
        retiring = [r for r in old if r.state != READY][: step.stop_old_starting]
        retiring += [r for r in old if r.state == READY][: step.stop_old_ready]
        for replica in retiring:
            self.processes.drain(state, replica, "replaced by the new version")
        # Scale down: still-starting replicas first, then the newest.
        for replica in sorted(new, key=lambda r: (r.state == READY, -r.started))[: step.stop_new]:
            self.processes.drain(state, replica, "scaled down")
        if step.done and state.spec.name in self.updating:
            self.updating.discard(state.spec.name)
            state.previous = None
            state.event("rolling update done")

    # -- the liveness probes' side (stack.control.liveness) ------------------------------------

    def probe_targets(self) -> list[Probed]:
        """Starting replicas (are they ready?) and ready ones (are they still alive?); not those leaving."""
        return [
            Probed(name, r.id, r.url, r.state == READY, state.spec.predictor.health_check_timeout)
            for name, state in self.apis.items()
            for r in state.live()
        ]

    def events(self, api: str) -> list[str]:
        state = self.apis.get(api)
        return list(state.events) if state is not None else []

    async def run(self, plane: ControlPlane, stopping: asyncio.Event) -> None:
        """The control plane's fleet: keep the replicas until `stopping`, with the supervisor's own duties (its
        control API, its state files, the gateway and Prometheus kept running) beside."""
        self.router.routes, self.liveness = plane.routes, plane.liveness
        async with self.duties.running(self, plane, stopping):
            await self.reconcile(stopping)

    async def replace(self, replica: Probed, decision: Decision) -> None:
        state = self.apis.get(replica.api)
        found = next((r for r in state.replicas if r.id == replica.replica), None) if state else None
        if state is None or found is None or found.state != READY:
            return  # gone, or already leaving
        state.replaced(found, decision.reason)
        if not decision.kill:
            self.processes.drain(state, found, f"unhealthy, replaced: {decision.reason}")
        else:  # stuck: it answered what it held (or cannot answer anything): out of the routes, killed now
            self.processes.kill(found)
        self.wake.set()

    # -- what the control plane drives: its Scaler, its Waker, and the Fleet's questions ---------

    def manual(self, api: str) -> bool:
        return api in self.apis and self.apis[api].manual

    def rolling_out(self, api: str) -> str | None:
        return f"{api} is rolling out its new version" if api in self.updating else None

    def set_desired(self, api: str, count: int, why: str, by_hand: bool = False) -> None:
        state = self.apis[api]
        state.desired = count
        state.manual = state.manual or by_hand
        state.clear_failures()  # a new count is a fresh attempt: its replicas start without back-off
        state.event(why)
        self.wake.set()

    async def replicas(self, api: ApiScaling) -> Replicas:
        state = self.apis[api.name]
        ready = state.serving(self.router.serving_urls(api.name))
        busy = "rolling update in progress" if api.name in self.updating else ""
        return Replicas(state.desired, len(ready), busy)

    async def scale(self, api: ApiScaling, count: int, reason: str) -> None:
        state = self.apis[api.name]
        bounds = state.spec.autoscaling
        wanted = min(max(count, bounds.min_replicas), bounds.max_replicas)
        self.set_desired(api.name, wanted, f"autoscaler: {state.desired} -> {wanted}: {reason}")

    def known(self, api: str) -> bool:
        return api in self.apis

    async def activate(self, api: str) -> None:
        if self.apis[api].desired == 0:
            self.set_desired(api, 1, "a request woke it from zero")

    async def ready_url(self, api: str) -> str | None:
        state = self.apis[api]
        ready = [r for r in state.ready() if r.version == state.version]
        return ready[0].url if ready else None

    def start_error(self, api: str) -> str | None:
        failed = self.apis[api].failed_slot
        return failed.error if failed is not None else None


def write_keys(paths: LocalPaths, loaded: LoadedSpec, only_if_missing: bool = False) -> None:
    """The API keys file the replicas read (0600), always there (no key in it: the stack is open), rewritten
    when the keys change: the replicas follow it (serving.keys). `only_if_missing`: put back a removed one."""
    if only_if_missing and paths.api_keys.exists():
        return
    text = api_keys_text(loaded)
    try:
        if paths.api_keys.read_text() == text:
            return  # unchanged: the replicas have nothing to read again
    except OSError:
        pass
    paths.api_keys.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(paths.api_keys, text, 0o600)
