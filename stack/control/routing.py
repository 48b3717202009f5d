"""The gateway's routes as the control plane keeps them: data in, one sink out.

`GatewayRoutes` holds what the routes are made of — each API's serving
replicas (the fleet reports them), the splitters with the weights that apply
now (`stack split`'s, else a canary's, else stack.yaml's) — and hands the
whole table to the target's `RouteSink` whenever any of it changes. The sink
decides how the gateway learns it: Traefik's file provider on the local and
Compose targets, a Nomad Variable that Traefik's job renders on Nomad (whose
service catalogue carries the replicas themselves).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from stack import routes
from stack.control.affinity import ApiAffinity
from stack.control.autoscale.config import AutoscalerConfig, RoutedApi
from stack.routes import Route, Split
from stack.splits import applied
from stack.status import AffinityStatus
from stack.tls import TLS_FILE, TlsFiles, write_config

Weights = dict[str, dict[str, int]]  # splitter -> API -> weight
OVERRIDES_EVERY = 1.0  # seconds between reads of the weights `stack split` set


@dataclass(frozen=True)
class RouteTable:
    """Everything the gateway routes: one route per API, one split per splitter."""

    routes: tuple[Route, ...]
    splits: tuple[Split, ...]
    auth: bool = False  # named keys: every router asks the controller first (stack.control.tenants)


class RouteSink(Protocol):
    def write(self, table: RouteTable) -> bool:
        """Make the gateway route `table` (blocking I/O is fine); True when that changed anything."""
        ...


class FileRouteSink:
    """Traefik's file provider: the routes file in `directory`, rewritten whole (local and Compose).

    The file is compared on every write, so one truncated or edited by hand is put right at the next.
    """

    def __init__(
        self,
        directory: Path,
        header: str,
        errors_url: str,
        tls: TlsFiles | None = None,
        upstreams: Path | None = None,
    ) -> None:
        self.directory = directory
        self.header = header
        self.errors_url = errors_url  # stack.control.gateway_errors: the gateway's own answers, and the activator
        self.tls = tls  # gateway.tls: its files re-read at every write, so a renewed certificate is served
        # Pipelines: the same table for the replicas' calls to each other (serving.calls), in a directory
        # of its own (the routes directory holds the gateway's TLS key, which replicas must never see).
        self.upstreams = upstreams

    def write(self, table: RouteTable) -> bool:
        text = routes.render(list(table.routes), self.header, self.errors_url, table.splits, table.auth)
        if self.tls is not None:
            write_config(self.directory, self.tls)
        else:
            (self.directory / TLS_FILE).unlink(missing_ok=True)  # no key left behind once tls is gone
        if self.upstreams is not None:
            listed = routes.upstreams(list(table.routes), self.errors_url)
            routes.write(self.upstreams, listed, name=routes.UPSTREAMS_FILE)
        return routes.write(self.directory, text)

    def empty_url(self, route: Route) -> str:
        """Where an API's service points while it has no replica."""
        return routes.empty_url(route, self.errors_url)


class GatewayRoutes:
    """The routes of one stack, published to its sink when they change (thread-safe: the Compose
    controller publishes from a worker thread while a canary's change arrives on the event loop)."""

    def __init__(
        self,
        config: AutoscalerConfig,
        sink: RouteSink,
        overrides: Callable[[], Weights],
        canaries: Callable[[], Weights],
        clock: Callable[[], float] = time.monotonic,
        auth: Callable[[], bool] = lambda: False,
    ) -> None:
        self.sink = sink
        self.auth = auth  # named keys are set: routes ask the controller first
        self.overrides = overrides  # weights set by `stack split`, until the next `stack up`
        self.canaries = canaries  # weights the splitters' canaries set now
        self.clock = clock
        self.servers: dict[str, tuple[str, ...]] = {}  # API -> serving replicas, as last published
        self.pins: dict[str, dict[str, tuple[str, ...]]] = {}  # API -> affinity value -> its servers, as published
        self._lock = threading.Lock()
        self._overrides: Weights = {}
        self._overrides_at = -OVERRIDES_EVERY
        self.configure(config)

    def configure(self, config: AutoscalerConfig) -> None:
        """A `stack up` changed the APIs or splitters."""
        self.config = config
        self.apis: dict[str, RoutedApi] = {api.name: api for api in config.routed}
        before = getattr(self, "affinity", {})
        self.affinity: dict[str, ApiAffinity] = {}
        for api in config.routed:
            if api.affinity is not None:
                kept = before.get(api.name)
                self.affinity[api.name] = kept or ApiAffinity(api.spread_at)
                self.affinity[api.name].spread_at = api.spread_at
                self.affinity[api.name].per_server = api.cache_size

    def affinity_status(self, api: str, names: Mapping[str, str]) -> AffinityStatus | None:
        """`stack status`'s view of an API's affinity: each value's replicas, what each replica holds, the
        hit ratio; `names`: server URL -> replica id."""
        affinity = self.affinity.get(api)
        if affinity is None:
            return None
        with self._lock:
            pins = dict(self.pins.get(api, {}))
            held = affinity.held()
            ratio = affinity.hit_ratio()
            loads = dict(affinity.loads)
            capacity = affinity.capacity
            per_minute = affinity.loads_per_minute()
        return AffinityStatus(
            models={v: [names.get(url, url) for url in urls] for v, urls in sorted(pins.items())},
            held={names.get(url, url): values for url, values in sorted(held.items())},
            in_flight={v: round(load, 2) for v, load in sorted(loads.items()) if load > 0},
            hit_ratio=None if ratio is None else round(ratio, 3),
            per_replica=capacity,
            loads_per_minute=round(per_minute, 1),
        )

    def observe(self, api: str, server: str, report: Mapping[str, object]) -> bool:
        """A replica's affinity report (its /healthz); True when the values it holds changed."""
        with self._lock:  # the Compose controller publishes from a worker thread
            affinity = self.affinity.get(api)
            return affinity.observe(server, report) if affinity is not None else False

    def route(self, api: RoutedApi, servers: Collection[str] = ()) -> Route:
        activate = api.name if api.scale_to_zero else None
        affinity = self.affinity.get(api.name)
        pins = affinity.routes(sorted(servers)) if affinity is not None and servers else {}
        if affinity is not None:
            self.pins[api.name] = pins
        return Route(
            api.router,
            api.endpoint,
            tuple(sorted(servers)),
            activate=activate,
            strategy=api.load_balancer,
            max_body=api.max_body_size,
            api=api.name,
            affinity=api.affinity,
            pins=tuple(sorted(pins.items())),
        )

    def table(self, servers: Mapping[str, Collection[str]]) -> RouteTable:
        now = self.clock()
        if now - self._overrides_at >= OVERRIDES_EVERY:
            self._overrides, self._overrides_at = self.overrides(), now
        table = tuple(self.route(api, servers.get(name, ())) for name, api in sorted(self.apis.items()))
        table += tuple(Route(b.router, b.endpoint, jobs=b.name) for b in self.config.batch)
        splits = applied(self.config.project, self.config.splitters, self._overrides, self.canaries())
        return RouteTable(table, splits, self.auth())

    def publish(self, servers: Mapping[str, Collection[str]]) -> bool:
        """Route these replicas (API -> base URLs); True when the gateway's routes changed."""
        with self._lock:
            self.servers = {name: tuple(sorted(urls)) for name, urls in servers.items()}
            return self.sink.write(self.table(self.servers))

    async def refresh(self) -> None:
        """Publish again with the replicas last published (a canary or `stack split` changed a weight)."""
        self._overrides_at = -OVERRIDES_EVERY
        await asyncio.to_thread(self.publish, dict(self.servers))
