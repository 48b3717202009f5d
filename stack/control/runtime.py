"""The control-plane runtime: one composition of the stack's controller, the same on every target.

Every running stack has one controller — the local supervisor, the Compose
controller (the autoscaler service), the Nomad autoscaler job — and every one
of them is a `ControlPlane` built from its target's `Adapters`:

    fleet      keeps the replicas (reconcile: a killed one is replaced) and says
               which serve; it publishes them to the gateway's routes; it lists the
               replicas the liveness probes ask and replaces the ones they condemn
    scaler     changes an API's count for the autoscaler
    waker      starts a replica of an API scaled to zero for the activator
    signal     requests in flight per API, for the autoscaler
    metrics    the replicas' and the gateway's counters, for the canaries
    canaries   where the canaries keep their state;  splits: the weights `stack split` set
    routes     where the gateway's routes go (a file, a Nomad Variable)
    batch      BatchAPI jobs: the queue's file and how a job's workers start (stack.control.batch)

The runtime itself is target-blind: the autoscaler, the canary runner, the
activator with the gateway's own JSON errors, the routes as data, the liveness
probes (stack.control.liveness) and the controller's HTTP endpoint (/metrics,
/status, /healthz) are composed here
once. A target contributes adapters only; `stack.targets.open_control` picks
them from the targets' table, as `open_target` picks a target.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from serving.keys import KeyEntry
from stack.control.activator import Activator, Waker
from stack.control.autoscale.config import ApiScaling, AutoscalerConfig
from stack.control.autoscale.loop import Autoscaler, SignalSource
from stack.control.autoscale.policy import Bounds, Policy, WorkingSet, stack_policy
from stack.control.autoscale.scaler import Replicas, Scaler
from stack.control.batch.jobs import BatchWorkers, JobManager, job_routes
from stack.control.batch.store import JobStore
from stack.control.canary import CanaryRunner, Store, status_of
from stack.control.canary_sources import Source
from stack.control.dashboard.data import Dashboard
from stack.control.dashboard.web import dashboard_routes
from stack.control.gateway_errors import serve_errors
from stack.control.liveness import Decision, Liveness, Probed
from stack.control.routing import GatewayRoutes, RouteSink, Weights
from stack.control.tenants import GRACE, Tenants, routers_of, tenant_routes
from stack.errors import StackError
from stack.splits import member_services
from stack.status import AffinityStatus, AutoscalerStatus, SplitterStatus

LOGGER = logging.getLogger("stack.control")
AFFINITY_EVERY = 2.0  # seconds between writes of the affinity status file (when it changed)
Address = tuple[str, int]


class Fleet(Protocol):
    """What keeps one target's replicas: the local processes, the Compose containers (on Nomad, Nomad)."""

    async def run(self, plane: ControlPlane, stopping: asyncio.Event) -> None:
        """Keep the replicas until `stopping`; publish the serving ones to `plane.routes`."""
        ...

    def manual(self, api: str) -> bool:
        """`stack scale --force` took the API: the autoscaler leaves it alone until the next `stack up`."""
        ...

    def rolling_out(self, api: str) -> str | None:
        """Why the API's canary cannot be judged now (its new version is still replacing the old), or None.
        Called from a worker thread: it may block."""
        ...

    def probe_targets(self) -> list[Probed]:
        """The replicas the controller's liveness probes ask now (none where the platform probes them: Nomad)."""
        ...

    async def replace(self, replica: Probed, decision: Decision) -> None:
        """Replace a replica the probes found stuck (kill it) or unhealthy (drain it), out of the routes at once;
        count the restart and say why as an event."""
        ...

    def events(self, api: str) -> list[str]:
        """The API's recent events (`HH:MM:SS what happened`), newest last: replicas replaced and why, restarts,
        rollouts. Blocking I/O is fine (called from a worker thread)."""
        ...


class SplitStore(Protocol):
    def overrides(self) -> Weights:
        """The weights `stack split` set, until the next `stack up` (blocking I/O is fine)."""
        ...


@dataclass
class Adapters:
    """What one target contributes to its control plane; everything else is the same everywhere."""

    config: AutoscalerConfig
    fleet: Fleet
    scaler: Scaler
    waker: Waker
    signal: SignalSource
    metrics: Source
    canaries: Store
    splits: SplitStore
    routes: RouteSink
    decisions: Path | None = None  # the autoscaler's decisions, for `stack status` and a restart
    listen: Address | None = None  # the controller's /metrics, /status and /healthz
    errors: Address | None = None  # the gateway's own JSON errors and the activator (stack.control.gateway_errors)
    start_timeout: float = 600.0  # how long a request held for an API scaled to zero waits
    batch: BatchWorkers | None = None  # BatchAPI jobs: their queue and how their workers start
    prometheus_url: Callable[[], str | None] = lambda: None  # for the dashboard (stack.control.dashboard); it may move
    dashboard_keys: Callable[[], list[bytes]] | None = None  # Nomad: the dashboard is behind the gateway, with a key
    # Where the affinity APIs' status (JSON) goes for a `stack status` on the host: a file of the Compose
    # controller's shared state directory, a Nomad Variable (the local supervisor answers status itself).
    affinity_out: Callable[[str], None] | None = None
    # The stack's keys as its keys file holds them (serving.keys), for the named keys' limits
    # (stack.control.tenants); None: the controller checks no key itself.
    keys: Callable[[], list[KeyEntry]] | None = None
    # Seconds a named key's lease may go unreported by every replica before it is let go (stack.control.tenants):
    # its request still on its way, to a replica the controller may not be asking yet.
    lease_grace: float = GRACE


@dataclass(frozen=True)
class ControlSettings:
    """How a stack's controller was asked to run, what every target's controller shares (`stack autoscale`'s
    flags; the local supervisor reads its spec). What one target needs besides is its own settings
    (`stack.targets.<name>.settings`)."""

    config: AutoscalerConfig | None = None  # None: the target reads it (the local supervisor, from its spec)
    prometheus_url: str | None = None
    metrics_port: int = 9100  # the controller's /metrics, /status, /healthz
    state_dir: Path | None = None  # decisions, counts, canaries, weights set by hand (shared with the host)


OpenAdapters = Callable[[aiohttp.ClientSession], AbstractAsyncContextManager[Adapters]]


class ControlPlane:
    def __init__(self, adapters: Adapters, policy: Policy = stack_policy) -> None:
        self.adapters = adapters
        config = adapters.config
        self.registry = CollectorRegistry()  # the controller's own metrics, on its /metrics
        self.activator = Activator(adapters.waker, timeout=adapters.start_timeout, registry=self.registry)
        self.canary = CanaryRunner(
            config.splitters,
            adapters.canaries,
            adapters.metrics,
            registry=self.registry,
            overridden=lambda: set(adapters.splits.overrides()),
            services=lambda splitter: member_services(self.config.project, splitter),
            busy=adapters.fleet.rolling_out,
        )
        self.tenants: Tenants | None = None
        if adapters.keys is not None:
            self.tenants = Tenants(
                adapters.keys, routers_of(config), registry=self.registry, grace=adapters.lease_grace
            )
        tenants = self.tenants
        self.routes = GatewayRoutes(
            config,
            adapters.routes,
            adapters.splits.overrides,
            self.canary.weights,
            auth=(lambda: tenants.active) if tenants is not None else (lambda: False),
        )
        self.canary.on_change = self.routes.refresh
        self.autoscaler = Autoscaler(
            config,
            adapters.scaler,
            adapters.signal,
            policy=policy,
            registry=self.registry,
            manual=adapters.fleet.manual,
            state_file=adapters.decisions,
            activity=self.activator.last_request.get,
            models=self._working_set,
        )
        self.liveness = Liveness(
            adapters.fleet.probe_targets,
            adapters.fleet.replace,
            on_affinity=lambda replica, report: self.routes.observe(replica.api, replica.url, report),
            on_leases=lambda replica, leases: self.tenants.seen(replica.url, leases) if self.tenants else None,
        )
        self.config = config
        self.jobs: JobManager | None = None
        if adapters.batch is not None:
            batch = adapters.batch
            self.jobs = JobManager(JobStore(batch.store), batch.pool, config.batch, batch.keys)

    def configure(self, config: AutoscalerConfig) -> None:
        """A `stack up` changed the spec: new bounds, APIs and splitters, histories kept."""
        self.config = config
        if self.jobs is not None:
            self.jobs.configure(config.batch)
        self.autoscaler.configure(config)
        self.canary.configure(config.splitters)
        self.routes.configure(config)
        if self.tenants is not None:
            self.tenants.routers = routers_of(config)

    def status(self) -> dict[str, AutoscalerStatus]:
        """The autoscaler's last decisions per API, as `stack status` shows them."""
        return self.autoscaler.status()

    def _working_set(self, api: str, window: float) -> WorkingSet | None:
        """An affinity API's models in use within `window`, and what one replica holds (its cache_size, else
        as its evictions showed)."""
        affinity = self.routes.affinity.get(api)
        if affinity is None or not affinity.capacity:
            return None
        observed = not affinity.per_server
        return WorkingSet(affinity.in_use(window), affinity.capacity, affinity.loads_per_minute() if observed else None)

    def affinity(self) -> dict[str, AffinityStatus]:
        """Each affinity API's values and replicas (stack.control.affinity), as `stack status` shows them."""
        names = {p.url: p.replica for p in self.adapters.fleet.probe_targets()}
        out = {}
        for api in self.routes.affinity:
            shown = self.routes.affinity_status(api, names)
            if shown is not None:
                out[api] = shown
        return out

    async def _write_affinity(self, out: Callable[[str], None], stopping: asyncio.Event) -> None:
        """Where the host's `stack status` reads it (Adapters.affinity_out), when it changed."""
        written = None
        while not stopping.is_set():
            try:
                text = json.dumps({api: asdict(shown) for api, shown in self.affinity().items()}, sort_keys=True)
                if text != written and (self.routes.affinity or written is not None):  # none: nothing to say
                    await asyncio.to_thread(out, text)
                    written = text
            except (OSError, StackError) as exc:
                LOGGER.warning(f"cannot write the affinity status: {exc}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), AFFINITY_EVERY)

    def metrics_text(self) -> bytes:
        return generate_latest(self.registry)

    async def replicas(self, api: str) -> Replicas | None:
        """Ready and asked-for replicas of any routed API, from the target (the dashboard's "now")."""
        scaling = next((a for a in self.config.apis if a.name == api), None) or ApiScaling(api, Bounds(1, 1, 1.0))
        try:
            return await self.adapters.scaler.replicas(scaling)
        except Exception as exc:  # the page says "?" and tries again
            LOGGER.debug(f"{api}: replicas unknown: {exc}")
            return None

    def events(self, api: str) -> list[str]:
        """The API's recent events, as `stack status API` lists them (the dashboard's copy)."""
        return self.adapters.fleet.events(api)

    def splitters(self) -> list[SplitterStatus]:
        """The splitters as `stack status` shows them, from the controller's own stores."""
        return status_of(self.config.splitters, self.adapters.splits.overrides(), self.adapters.canaries.load())

    async def run(self, stopping: asyncio.Event) -> None:
        runners: list[web.AppRunner] = []
        session = aiohttp.ClientSession()  # the dashboard's queries to Prometheus
        try:
            if self.adapters.listen is not None:
                dashboard = Dashboard(self, session, self.adapters.prometheus_url)
                app = self._app()
                app.router.add_routes(dashboard_routes(dashboard.document, self.adapters.dashboard_keys))
                runners.append(await _serve(app, self.adapters.listen, "the controller's metrics"))
            if self.adapters.errors is not None:
                host, port = self.adapters.errors
                extra = job_routes(self.jobs) if self.jobs is not None else []
                extra += tenant_routes(self.tenants) if self.tenants is not None else []
                runners.append(await serve_errors(host, port, self.activator, extra))
            names = ", ".join(a.name for a in self.config.routed) or "none"
            LOGGER.info(f"controlling {names} of {self.config.project}")
            self.liveness.session = session
            await asyncio.gather(
                self.adapters.fleet.run(self, stopping),
                self.liveness.run(stopping),
                self.autoscaler.run(stopping),
                self.canary.run(stopping),
                *([self._write_affinity(self.adapters.affinity_out, stopping)] if self.adapters.affinity_out else []),
                *([self.jobs.run(stopping)] if self.jobs is not None else []),
            )
        finally:
            if self.jobs is not None:
                await self.jobs.close()
            for runner in runners:
                await runner.cleanup()
            await session.close()
            await self.activator.close()

    def _app(self) -> web.Application:
        async def metrics(request: web.Request) -> web.Response:
            response = web.Response(body=self.metrics_text())
            response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
            return response

        async def status(request: web.Request) -> web.Response:
            return web.json_response({api: asdict(shown) for api, shown in self.status().items()})

        async def healthz(request: web.Request) -> web.Response:
            return web.json_response({"ok": True})

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/status", status)
        app.router.add_get("/healthz", healthz)
        return app


async def _serve(app: web.Application, address: Address, what: str) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, *address).start()
    except OSError as exc:
        await runner.cleanup()
        raise StackError(f"{what} port {address[1]} is already in use ({exc.strerror}); pass --metrics-port") from None
    return runner


async def run_control(open_adapters: OpenAdapters, policy: Policy = stack_policy) -> None:
    """Run a stack's controller until SIGTERM or SIGINT (or its fleet stops it)."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    async with aiohttp.ClientSession() as session, open_adapters(session) as adapters:
        await ControlPlane(adapters, policy).run(stopping)
