"""The local target's adapters for the control plane (stack.control.runtime): Traefik and Prometheus as
child processes (children), the replicas as processes reconciled by the fleet, and the supervisor's duties
(duties). The autoscaler reads Prometheus when it runs, else scrapes the replicas itself."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import aiohttp

from stack.control.autoscale.config import config_of
from stack.control.autoscale.signal import PrometheusSignal, ScrapeSignal, Signal
from stack.control.batch.jobs import BatchWorkers
from stack.control.canary import STATE_FILE, FileStore
from stack.control.canary_sources import PrometheusSource, ScrapeSource
from stack.control.routing import FileRouteSink, GatewayRoutes
from stack.control.runtime import Adapters, ControlSettings
from stack.control.tenants import keys_in
from stack.plan.gpus import read_placement
from stack.plan.versions import project_digest
from stack.spec import load_spec
from stack.splits import FileSplits
from stack.targets.local.batch_workers import LocalWorkers
from stack.targets.local.children import LocalServices
from stack.targets.local.duties import SupervisorDuties
from stack.targets.local.fleet import LocalFleet
from stack.targets.local.settings import LocalSettings
from stack.targets.local.state import LocalPaths, forget
from stack.tls import tls_files

ROUTES_HEADER = "Written by the `stack up --local` supervisor whenever a replica joins or leaves."
START_TIMEOUT = 600.0  # seconds a request held for an API scaled to zero waits for a replica


class _ScrapeSignal:
    """Without Prometheus: scrape the ready replicas on every read."""

    def __init__(self, scrape: ScrapeSignal, fleet: LocalFleet) -> None:
        self.scrape = scrape
        self.fleet = fleet

    async def read(self, api: str, window: float, short_window: float) -> Signal:
        problem = await self.scrape.sample(api, self.fleet.ready_urls(api))
        if problem:
            return Signal(None, None, problem)
        return self.scrape.read(api, window, short_window)


@contextlib.asynccontextmanager
async def adapters(
    settings: ControlSettings, own: LocalSettings, session: aiohttp.ClientSession
) -> AsyncIterator[Adapters]:
    """The local stack's processes, started here and stopped when the controller ends."""
    loaded = load_spec(own.spec_file)
    paths = LocalPaths(loaded.root, loaded.path.name)
    services = LocalServices(loaded, paths)
    routes = FileRouteSink(
        paths.traefik_dir,
        ROUTES_HEADER,
        services.errors_url,
        tls_files(loaded.root, loaded.spec.gateway.tls),
        upstreams=paths.upstreams,
    )
    fleet = LocalFleet(loaded, paths, services, session, routes, SupervisorDuties(services, paths))
    placement = read_placement(paths.placement)
    slots = placement.slot_devices()
    fleet.apply_spec(loaded, await asyncio.to_thread(project_digest, loaded), first=True, slots=slots)
    config = config_of(loaded, slots, versions=fleet.versions())
    splits = FileSplits(paths.split_overrides)
    # The routes file is there before Traefik starts: it serves the APIs' JSON 503 until replicas are ready.
    named = bool(loaded.spec.gateway.keys)
    GatewayRoutes(config, routes, splits.overrides, dict, auth=lambda: named).publish({})
    try:
        await services.start()
        if services.prometheus_url:
            signal_source: PrometheusSignal | _ScrapeSignal = PrometheusSignal(
                services.prometheus_url, session, loaded.spec.prometheus.scrape_interval
            )
            metrics: PrometheusSource | ScrapeSource = PrometheusSource(services.prometheus_url, session)
            services.on_prometheus_moved += [_follow(signal_source), _follow(metrics)]
        else:
            signal_source = _ScrapeSignal(ScrapeSignal(session, keep=600.0), fleet)
            metrics = ScrapeSource(session, fleet.ready_urls, f"http://127.0.0.1:{services.metrics_port}/metrics")
        yield Adapters(
            config,
            fleet=fleet,
            scaler=fleet,
            waker=fleet,
            signal=signal_source,
            metrics=metrics,
            canaries=FileStore(paths.split_overrides / STATE_FILE),
            splits=splits,
            routes=routes,
            listen=("127.0.0.1", services.control_port),
            errors=("127.0.0.1", services.errors_port),
            prometheus_url=lambda: services.prometheus_url,
            start_timeout=START_TIMEOUT,
            keys=keys_in(paths.api_keys),
            batch=BatchWorkers(
                paths.jobs,
                LocalWorkers(lambda: fleet.loaded, paths, services.errors_url),
                lambda: [key.encode() for key in fleet.loaded.spec.gateway.all_keys],
            ),
        )
    finally:
        await services.stop()
        forget(paths)


def _follow(reader: PrometheusSignal | PrometheusSource | _ScrapeSignal | ScrapeSource) -> Callable[[str], None]:
    """Point a reader of Prometheus at its new address."""

    def follow(url: str) -> None:
        reader.url = url  # type: ignore[union-attr]

    return follow
