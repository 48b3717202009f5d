"""The local fleet's side of the gateway: publish the ready replicas, and know which ones Traefik serves.

A replica counts as serving only once Traefik's own API says it balances over
it (a route file written is not a route applied), and an API's first replica
only once a request through the gateway reaches it; a replica leaving is
told to stop only once Traefik no longer lists it. That ordering is what makes
local scale-downs and rolling updates lose no request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import aiohttp

from stack.control.routing import FileRouteSink, GatewayRoutes
from stack.targets.gateway import readiness_url, wait_until_routed
from stack.targets.local import traefik
from stack.targets.local.children import LocalServices, write_targets

LOGGER = logging.getLogger("stack.targets.local")
CONFIRM_TIMEOUT = 10.0  # seconds to wait for Traefik to apply a routes file
RECHECK = 1.0  # seconds between checks of an unchanged routes file (edited or truncated by hand)


class LocalRouter:
    def __init__(
        self,
        services: LocalServices,
        session: aiohttp.ClientSession,
        sink: FileRouteSink,
        wanted: Callable[[], dict[str, set[str]]],
    ) -> None:
        self.services = services
        self.session = session
        self.sink = sink
        self.wanted = wanted  # API -> the URLs of its ready replicas, as the fleet sees them now
        self.routes: GatewayRoutes | None = None  # the control plane's, once it runs
        self.routed: dict[str, set[str]] = {}  # API -> server URLs last published
        # API -> server URLs Traefik confirmed it balances over: only these count as ready, so
        # `stack up` never returns, nor the autoscaler count a replica, before requests reach it.
        self.serving: dict[str, set[str]] = {}
        self.checked = 0.0

    def serving_urls(self, api: str) -> set[str]:
        return self.serving.get(api, set())

    async def sync(self) -> None:
        """Publish the ready replicas when they changed (and re-check the file once a second);
        return once Traefik applies them."""
        assert self.routes is not None
        wanted = self.wanted()
        now = time.monotonic()
        if wanted == self.routed and now - self.checked < RECHECK:
            return
        self.checked = now
        changed = self.routes.publish(wanted)
        if wanted != self.routed and self.services.prometheus is not None:
            write_targets(self.services.targets_file, self.services.loaded.spec.project, wanted)
        if not changed and wanted == self.routed:
            return
        if changed:
            LOGGER.info(f"gateway routes rewritten in {self.sink.directory}")
        self.routed = wanted
        await self._confirm(wanted)

    async def _confirm(self, wanted: dict[str, set[str]]) -> None:
        assert self.routes is not None
        apis = dict(self.routes.apis)
        deadline = time.monotonic() + CONFIRM_TIMEOUT
        while time.monotonic() < deadline:
            current = {name: await self.live(api.router) for name, api in apis.items()}
            # An API without replicas is routed to the error service (a JSON 503), not to nothing.
            if all(
                current[name] == (wanted.get(name) or {self.sink.empty_url(self.routes.route(api))})
                for name, api in apis.items()
            ):
                for name in [n for n in wanted if wanted[n] and not self.serving.get(n) and n in apis]:
                    await self._wait_gateway_serves(name, apis[name].endpoint)
                self.serving.update(wanted)
                return
            await asyncio.sleep(0.05)
        LOGGER.warning(f"Traefik did not confirm the new routes within {CONFIRM_TIMEOUT:g}s")
        self.serving.update(wanted)  # what the route file says is the best left to go on

    async def live(self, router: str) -> set[str] | None:
        return await traefik.live_servers(self.session, self.services.api_port, router)

    async def wait_unrouted(self, api: str, url: str) -> None:
        """Until Traefik no longer sends requests to `url` (at most CONFIRM_TIMEOUT)."""
        await self.sync()
        router = self.routes.apis[api].router if self.routes and api in self.routes.apis else None
        deadline = time.monotonic() + CONFIRM_TIMEOUT
        while router is not None and time.monotonic() < deadline:
            live = await self.live(router)
            if live is not None and url not in live:
                return
            await asyncio.sleep(0.05)

    async def _wait_gateway_serves(self, api: str, endpoint: str) -> None:
        """An API's first replica counts once a request through the gateway reaches it."""
        url = readiness_url(self.services.check_port, endpoint)
        if not await asyncio.to_thread(wait_until_routed, url, CONFIRM_TIMEOUT):
            LOGGER.warning(f"{api}: the gateway did not reach its first replica within {CONFIRM_TIMEOUT:g}s")
