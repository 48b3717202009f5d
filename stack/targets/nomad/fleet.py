"""The Nomad target's fleet: Nomad itself keeps the allocations (restarts, reschedules, its own checks with
`check_restart`); the controller keeps the splitters' routes current, says when a rollout runs, and lists
allocations from Nomad's service catalogue to ask each one's /healthz (never judged: Nomad's checks replace
it): for APIs with model affinity (`networking.affinity`), what it holds, to route each value; in a stack
with named keys (`gateway.keys`), every API's, for the leases it holds, so that a concurrency lease whose
allocation died with it is let go within seconds (stack.control.tenants), not after LEASE_TTL."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from stack.control.liveness import EVERY, Decision, Probed
from stack.control.runtime import ControlPlane
from stack.errors import StackError
from stack.targets.nomad.api import NomadApi
from stack.targets.nomad.splits import rolling_out

LOGGER = logging.getLogger("stack.targets.nomad")


def asked(affinity: list[str], routed: list[str], keyed: bool) -> list[str]:
    """The APIs whose allocations the controller asks: the affinity APIs; every routed API when named keys
    may hold leases on any of them (the leases' clean-up counts on every replica being asked)."""
    return sorted(set(affinity) | (set(routed) if keyed else set()))


class NomadFleet:
    def __init__(self, nomad: NomadApi, project: str) -> None:
        self.nomad = nomad
        self.project = project
        self.targets: list[Probed] = []  # the affinity APIs' allocations, asked what they hold

    async def run(self, plane: ControlPlane, stopping: asyncio.Event) -> None:
        await plane.routes.refresh()  # a canary that starts (a new version) sets its first step now
        while not stopping.is_set():
            affinity = list(plane.routes.affinity)
            listed = asked(affinity, list(plane.routes.apis), keyed=plane.tenants is not None)
            if listed:
                try:
                    servers = await asyncio.to_thread(self.registered, listed)
                    if affinity:
                        routed = {api: urls for api, urls in servers.items() if api in affinity}
                        await asyncio.to_thread(plane.routes.publish, routed)
                except StackError as exc:
                    LOGGER.warning(f"cannot list the allocations to ask: {exc}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), EVERY)

    def registered(self, apis: list[str]) -> dict[str, list[str]]:
        """API -> its allocations' URLs, from Nomad's service catalogue (and the probes' targets with them)."""
        servers: dict[str, list[str]] = {}
        targets = []
        for api in apis:
            for item in self.nomad.service(f"{self.project}-{api}"):
                url = f"http://{item['Address']}:{item['Port']}"
                servers.setdefault(api, []).append(url)
                replica = str(item.get("AllocID", ""))[:8] or url
                targets.append(Probed(api, replica, url, serving=True, judged=False))
        self.targets = targets
        return servers

    def manual(self, api: str) -> bool:
        return False  # NomadScaler reports a count set by hand as busy (the job's scaling events say so)

    def rolling_out(self, api: str) -> str | None:
        return rolling_out(self.nomad, f"{self.project}-{api}")

    def probe_targets(self) -> list[Probed]:
        # Nomad asks /healthz itself (the job's service check) and restarts a stuck task (check_restart); the
        # controller only asks what an allocation holds (its affinity values, its leases).
        return list(self.targets)

    async def replace(self, replica: Probed, decision: Decision) -> None:
        raise NotImplementedError("Nomad replaces its own allocations")

    def events(self, api: str) -> list[str]:
        return []  # Nomad keeps its allocations' events: `stack status --nomad API` shows each one's last
