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
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from serving.config import CONFIG_ENV
from serving.health import EXIT_STUCK
from serving.logs import REPLICA_ENV
from serving.runner import STARTUP_ERROR_ENV
from stack.atomic import write_text_atomic
from stack.autoscale.config import ApiScaling
from stack.autoscale.scaler import Replicas
from stack.control.liveness import Decision, Liveness, Probed
from stack.control.routing import FileRouteSink
from stack.plan.render import api_version
from stack.plan.serving import api_keys_text, host_model_cache, needs_model_cache, replica_config, tracing_config
from stack.routes import UPSTREAMS_FILE
from stack.spec import Api, LoadedSpec
from stack.spec.units import format_duration, format_memory
from stack.status import ReplicaState
from stack.targets.local import memory
from stack.targets.local.children import LocalServices, free_port, start_child, wait_or_kill
from stack.targets.local.router import LocalRouter
from stack.targets.local.state import LocalPaths
from stack.targets.rollout import Fleet, next_step
from stack.tls import tls_files

LOGGER = logging.getLogger("stack.targets.local")
TICK = 0.2  # seconds between reconcile passes
BACKOFF = (1, 2, 4, 8, 16, 30)  # seconds before a slot's next try after failures in a row (30 s for good)
ERROR_AFTER = 3  # a slot's start-up failures in a row that put its API in `error` (it keeps retrying)
MEMORY_EVERY = 0.5  # seconds between reads of the replicas' resident memory (compute.mem)
CRASH_WINDOW = 30.0  # a ready replica that dies sooner than this after starting counts toward back-off
STOP_MARGIN = 5.0
STARTING, READY, DRAINING = ReplicaState.STARTING, ReplicaState.READY, ReplicaState.DRAINING


@dataclass
class Replica:
    id: str
    api: str
    version: str
    port: int
    proc: asyncio.subprocess.Process
    log: Path
    state: ReplicaState = STARTING
    started: float = field(default_factory=time.monotonic)
    slot: int = 0  # its replica slot: for a GPU API the GPU(s) it is pinned to (stack.plan.gpus)
    gpu: str = ""  # those GPUs, as CUDA_VISIBLE_DEVICES names them
    replaced: str = ""  # why the liveness probes had it replaced

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class SlotHealth:
    """One replica slot's recent failures: its own count and back-off, not its API's."""

    failures: int = 0  # start-up failures in a row
    crashes: int = 0  # ready replicas that died soon after starting, in a row
    retry_at: float = 0.0  # monotonic time of its next try
    error: str = ""  # why its last replica failed to start
    replica: str = ""  # that replica

    def back_off(self, count: int) -> float:
        delay = BACKOFF[min(count - 1, len(BACKOFF) - 1)]
        self.retry_at = time.monotonic() + delay
        return delay


@dataclass
class ApiState:
    spec: Api
    version: str
    desired: int
    replicas: list[Replica] = field(default_factory=list)
    restarts: int = 0
    health: dict[int, SlotHealth] = field(default_factory=dict)  # slot -> its failures
    last_kill: str = ""  # why the supervisor last killed one of its replicas (memory), for `stack status`
    counter: int = 0
    events: list[str] = field(default_factory=list)
    manual: bool = False  # `stack scale --force` took the API from the autoscaler until the next `stack up`
    slots: list[list[str]] = field(default_factory=list)  # a GPU API's slots: each one's GPU ids
    previous: tuple[Api, str] | None = None  # while a rollout runs: the spec and version it rolls from
    rollout_started: float = 0.0  # monotonic
    rolled_back: str = ""  # why the last rollout was rolled back (until the next `stack up`)
    rollback_replica: str = ""  # the new replica whose failure rolled it back (its log says more)

    def free_slots(self) -> list[int]:
        """Slots no replica of the current version holds: a GPU API's placed ones, else as many as needed."""
        held = {r.slot for r in self.live() if r.version == self.version}
        count = len(self.slots) if self.slots else max(self.desired, 1)  # a new version's replicas: desired at most
        return [n for n in range(count) if n not in held]

    def next_slot(self) -> int | None:
        """The lowest free slot whose back-off is over."""
        now = time.monotonic()
        return next((n for n in self.free_slots() if self.slot(n).retry_at <= now), None)

    def slot(self, number: int) -> SlotHealth:
        return self.health.setdefault(number, SlotHealth())

    @property
    def failed_slot(self) -> SlotHealth | None:
        """A slot that failed ERROR_AFTER times in a row: the API is in `error` while nothing serves."""
        return next((h for _, h in sorted(self.health.items()) if h.failures >= ERROR_AFTER), None)

    @property
    def error(self) -> str | None:
        failed = self.failed_slot
        if failed is not None:
            return failed.error
        return self.last_kill or None

    @property
    def error_replica(self) -> str:
        failed = self.failed_slot
        return failed.replica if failed is not None else ""

    def live(self) -> list[Replica]:
        return [r for r in self.replicas if r.state != DRAINING]

    def ready(self) -> list[Replica]:
        return [r for r in self.replicas if r.state == READY]

    def serving(self, routed: set[str]) -> list[Replica]:
        """Ready replicas that Traefik confirmed it sends requests to."""
        return [r for r in self.ready() if r.url in routed]

    def event(self, message: str) -> None:
        LOGGER.info(f"{self.spec.name}: {message}")
        self.events = [*self.events[-19:], f"{time.strftime('%H:%M:%S')} {message}"]

    def clear_failures(self) -> None:
        self.health.clear()


class LocalFleet:
    def __init__(
        self,
        loaded: LoadedSpec,
        paths: LocalPaths,
        services: LocalServices,
        session: aiohttp.ClientSession,
        routes: FileRouteSink,
    ) -> None:
        self.loaded = loaded
        self.paths = paths
        self.services = services
        self.session = session
        self.router = LocalRouter(services, session, routes, self.routable)
        self.routes = routes
        self.apis: dict[str, ApiState] = {}
        self.updating: set[str] = set()  # APIs in a rolling update
        self.wake = asyncio.Event()  # set when a child exits or a count changes: reconcile now
        self.tasks: set[asyncio.Task[None]] = set()  # drains and child watchers: kept, awaited at exit
        self.killed: dict[str, str] = {}  # replica -> why the supervisor killed it (over compute.mem)
        self.memory_checked = 0.0
        self.liveness: Liveness | None = None  # the control plane's probes, once it runs

    def routable(self) -> dict[str, set[str]]:
        """API -> the URLs of its ready replicas that answer their probes: what the gateway should route now."""
        return {name: {r.url for r in s.ready() if not self.suspect(r)} for name, s in self.apis.items()}

    def suspect(self, replica: Replica) -> bool:
        """Its probes go unanswered (or it said it is stuck): no request should go to it."""
        health = self.liveness.of(replica.id) if self.liveness is not None else None
        return health is not None and (health.suspect or health.status in ("stuck", "unhealthy"))

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
        self.write_keys()
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

    def write_keys(self, only_if_missing: bool = False) -> None:
        """The API keys file the replicas read (0600), always there (no key in it: the stack is open), rewritten
        when the keys change: the replicas follow it (serving.keys). `only_if_missing`: put back a removed one."""
        if only_if_missing and self.paths.api_keys.exists():
            return
        text = api_keys_text(self.loaded)
        try:
            if self.paths.api_keys.read_text() == text:
                return  # unchanged: the replicas have nothing to read again
        except OSError:
            pass
        self.paths.api_keys.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.paths.api_keys, text, 0o600)

    # -- the reconcile loop ---------------------------------------------------------------------

    async def reconcile(self, stopping: asyncio.Event) -> None:
        try:
            while not stopping.is_set():
                self.wake.clear()
                await self._tick()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), TICK)
        finally:
            await self._shutdown()

    async def _tick(self) -> None:
        now = time.monotonic()
        if now - self.memory_checked >= MEMORY_EVERY:
            self.memory_checked = now
            _enforce_memory(self.apis.values(), self.killed)
        for state in list(self.apis.values()):
            self._reap(state)
            await self._probe(state)
            await self._step(state)
        await self.router.sync()
        spec_names = {a.name for a in self.loaded.spec.apis}
        for name in [n for n, s in self.apis.items() if s.desired == 0 and not s.replicas and n not in spec_names]:
            del self.apis[name]

    def _reap(self, state: ApiState) -> None:
        for replica in list(state.replicas):
            code = replica.proc.returncode
            if code is None:
                continue
            state.replicas.remove(replica)
            if replica.state == DRAINING:
                continue
            slot = state.slot(replica.slot)
            if replica.state == STARTING:
                slot.failures += 1
                slot.replica = replica.id
                slot.error = (
                    self.killed.pop(replica.id, "")
                    or _startup_error(self._error_file(replica.id))
                    or f"replica {replica.id} exited with code {code} while starting"
                )
                delay = slot.back_off(slot.failures)
                state.event(
                    f"replica {replica.id} failed to start (exit {code}, {slot.failures} in a row in its slot): "
                    f"{slot.error}; retry in {delay}s, at {_clock(delay)}"
                )
            else:
                state.restarts += 1
                if code == EXIT_STUCK:  # it found itself stuck (serving.health), answered what it held and left
                    stuck = _startup_error(self._error_file(replica.id)) or "stuck"
                    self.killed.setdefault(replica.id, f"{stuck}; it exited (code {code})")
                # A replica that keeps crashing soon after it started is replaced with back-off.
                uptime = time.monotonic() - replica.started
                slot.crashes = slot.crashes + 1 if uptime < CRASH_WINDOW else 1
                slot.replica = replica.id
                delay = slot.back_off(slot.crashes - 1) if slot.crashes > 1 else 0
                if not delay:
                    slot.retry_at = 0.0
                wait = f" in {delay}s, at {_clock(delay)} (crashed {slot.crashes} times in a row)" if delay else ""
                killed = self.killed.pop(replica.id, "")
                how = killed or f"exited with code {code}"
                state.event(f"replica {replica.id} {how}; replacing it{wait}")

    async def _probe(self, state: ApiState) -> None:
        for replica in [r for r in state.replicas if r.state == STARTING]:
            try:
                async with self.session.get(
                    replica.url + "/readyz", timeout=aiohttp.ClientTimeout(total=1)
                ) as response:
                    ready = response.status == 200
            except (aiohttp.ClientError, TimeoutError):
                ready = False
            if ready:
                replica.state = READY
                slot = state.slot(replica.slot)
                slot.failures, slot.error = 0, ""
                state.event(f"replica {replica.id} ready after {time.monotonic() - replica.started:.1f}s")

    async def _step(self, state: ApiState) -> None:
        failure = self._rollout_failure(state)
        if failure is not None:
            self._roll_back(state, *failure)
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
            await self._start_replica(state, slot)
        # Old versions: not-ready ones first, ready ones only while enough others serve.
        retiring = [r for r in old if r.state != READY][: step.stop_old_starting]
        retiring += [r for r in old if r.state == READY][: step.stop_old_ready]
        for replica in retiring:
            self._drain(state, replica, "replaced by the new version")
        # Scale down: still-starting replicas first, then the newest.
        for replica in sorted(new, key=lambda r: (r.state == READY, -r.started))[: step.stop_new]:
            self._drain(state, replica, "scaled down")
        if step.done and state.spec.name in self.updating:
            self.updating.discard(state.spec.name)
            state.previous = None
            state.event("rolling update done")

    def _rollout_failure(self, state: ApiState) -> tuple[str, str] | None:
        """Why the API's rollout must be rolled back, and the new replica to blame; None while it may go on."""
        if state.spec.name not in self.updating or state.previous is None:
            return None
        for _, slot in sorted(state.health.items()):
            if slot.failures >= ERROR_AFTER:
                why = f"replica {slot.replica} failed to start {slot.failures} times in a row: {slot.error}"
                return why, slot.replica
            if slot.crashes >= ERROR_AFTER:
                return f"replica {slot.replica} crashed {slot.crashes} times in a row soon after starting", slot.replica
        deadline = state.spec.update.progress_deadline
        if time.monotonic() - state.rollout_started > deadline:
            ready = sum(1 for r in state.ready() if r.version == state.version)
            starting = [r.id for r in state.live() if r.version == state.version and r.state == STARTING]
            return (
                f"the new version was not ready within {format_duration(deadline)} (update.progress_deadline): "
                f"{ready}/{state.desired} replicas ready",
                starting[0] if starting else "",
            )
        return None

    def _roll_back(self, state: ApiState, reason: str, replica: str) -> None:
        """The new version's replicas go; the API is on the version it rolled from, at its count."""
        assert state.previous is not None
        failed = state.version
        for leaving in [r for r in state.live() if r.version == failed]:
            self._drain(state, leaving, "its rollout was rolled back")
        state.spec, state.version = state.previous
        state.previous = None
        state.clear_failures()
        self.updating.discard(state.spec.name)
        state.rolled_back, state.rollback_replica = reason, replica
        state.event(f"rolled back from version {failed} to {state.version}: {reason}")
        self.wake.set()

    def _error_file(self, replica_id: str) -> Path:
        return self.paths.logs / f"{replica_id}.error.json"

    async def _start_replica(self, state: ApiState, slot: int) -> None:
        state.counter += 1
        replica_id = f"{state.spec.name}-{state.counter}"
        port = free_port()
        cache = host_model_cache(self.loaded, state.spec) if needs_model_cache(state.spec) else None
        config = replica_config(
            self.loaded,
            state.spec,
            host="127.0.0.1",
            port=port,
            drain_delay=0.0,
            keys_file=str(self.paths.api_keys),
            model_cache=str(cache) if cache else None,  # one download per host, shared by every replica
            upstreams_file=str(self.paths.upstreams / UPSTREAMS_FILE),
            tracing=tracing_config(self.loaded, state.version),
        )
        log = self.paths.replica_log(replica_id)
        error_file = self._error_file(replica_id)
        error_file.unlink(missing_ok=True)
        env = {**os.environ, **state.spec.predictor.env, CONFIG_ENV: config.to_json(), REPLICA_ENV: replica_id}
        env[STARTUP_ERROR_ENV] = str(error_file)
        gpu = ",".join(state.slots[slot]) if state.slots else ""
        if gpu:
            env["CUDA_VISIBLE_DEVICES"] = gpu  # its slot's GPU(s), by UUID where nvidia-smi gave one
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        for name in self.loaded.secret_env:  # the keys' variables: replicas read the keys file instead
            env.pop(name, None)
        proc = await start_child([sys.executable, "-m", "serving"], log, env=env, cwd=self.loaded.root)
        state.replicas.append(Replica(replica_id, state.spec.name, state.version, port, proc, log, slot=slot, gpu=gpu))
        # Its exit wakes the reconcile loop at once: a dead replica leaves the router
        # within milliseconds instead of at the next tick.
        self._spawn(self._watch(proc))
        on = f", GPU {gpu}" if gpu else ""
        state.event(f"started replica {replica_id} (version {state.version}, port {port}{on})")

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        await proc.wait()
        self.wake.set()

    def _drain(self, state: ApiState, replica: Replica, why: str) -> None:
        was_routed = replica.state == READY
        replica.state = DRAINING
        state.event(f"draining replica {replica.id}: {why}")
        # Out of the router first; SIGTERM only once Traefik confirms it is gone.
        self._spawn(self._terminate_when_unrouted(replica, was_routed))

    async def _terminate_when_unrouted(self, replica: Replica, was_routed: bool) -> None:
        if was_routed:
            await self.router.wait_unrouted(replica.api, replica.url)
        if replica.proc.returncode is None:
            replica.proc.send_signal(signal.SIGTERM)

    async def _shutdown(self) -> None:
        LOGGER.info("shutting down")
        every = [r for a in self.apis.values() for r in a.replicas]
        for replica in every:
            if replica.proc.returncode is None:
                replica.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + max(
            (a.spec.predictor.grace_period + STOP_MARGIN for a in self.apis.values()), default=10
        )
        await asyncio.gather(*(wait_or_kill(r.proc, deadline) for r in every))
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)

    # -- the liveness probes' side (stack.control.liveness) ------------------------------------

    def probe_targets(self) -> list[Probed]:
        return [
            Probed(name, r.id, r.url, True, state.spec.predictor.health_check_timeout)
            for name, state in self.apis.items()
            for r in state.ready()
        ]

    async def replace(self, replica: Probed, decision: Decision) -> None:
        state = self.apis.get(replica.api)
        found = next((r for r in state.replicas if r.id == replica.replica), None) if state else None
        if state is None or found is None or found.state != READY:
            return  # gone, or already leaving
        state.restarts += 1
        found.replaced = decision.reason
        state.event(f"replica {found.id} replaced: {decision.reason}")
        if decision.kill:
            # Stuck: it answered what it held (or cannot answer anything); out of the routes and killed now.
            found.state = DRAINING
            if found.proc.returncode is None:
                memory.kill_tree(memory.process_tree(found.proc.pid))
        else:
            self._drain(state, found, f"unhealthy, replaced: {decision.reason}")
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
        state = self.apis[api]
        if state.desired == 0:
            state.desired = 1
            state.clear_failures()
            state.event("a request woke it from zero")
            self.wake.set()

    async def ready_url(self, api: str) -> str | None:
        state = self.apis[api]
        ready = [r for r in state.ready() if r.version == state.version]
        return ready[0].url if ready else None

    def start_error(self, api: str) -> str | None:
        failed = self.apis[api].failed_slot
        return failed.error if failed is not None else None


def _enforce_memory(apis: Iterable[ApiState], killed: dict[str, str]) -> None:
    """Kill a replica whose processes hold more than its compute.mem (stack.targets.local.memory)."""
    for state in apis:
        limit = state.spec.compute.mem
        for replica in state.replicas if limit else []:
            if replica.state == DRAINING or replica.proc.returncode is not None or replica.id in killed:
                continue
            pids = memory.process_tree(replica.proc.pid)
            used = memory.resident_bytes(pids)
            if limit is None or used <= limit:
                continue
            # The API's error says what Compose says of a kernel OOM kill; the event has the detail.
            state.last_kill = f"killed: out of memory (limit {format_memory(limit)})"
            why = f"killed: out of memory (limit {format_memory(limit)}, resident {format_memory(used)})"
            killed[replica.id] = why
            LOGGER.warning(f"{state.spec.name}: replica {replica.id} {why} at {time.strftime('%H:%M:%S')}")
            memory.kill_tree(pids)


def _clock(delay: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(time.time() + delay))


def _startup_error(error_file: Path) -> str | None:
    """The reason a replica wrote for not starting (serving.runner.report_startup_error)."""
    try:
        data = json.loads(error_file.read_text())
    except (OSError, ValueError):
        return None
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, str) else None
