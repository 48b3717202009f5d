"""The Nomad target's fleet: Nomad itself keeps the allocations (restarts, reschedules, its own checks with
`check_restart`); the controller keeps the splitters' routes current, says when a rollout runs, and for
APIs with model affinity (`networking.affinity`) lists their allocations from Nomad's service catalogue,
asks each what it holds (its /healthz, never judged: Nomad's checks replace it) and routes each value."""

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


class NomadFleet:
    def __init__(self, nomad: NomadApi, project: str) -> None:
        self.nomad = nomad
        self.project = project
        self.targets: list[Probed] = []  # the affinity APIs' allocations, asked what they hold

    async def run(self, plane: ControlPlane, stopping: asyncio.Event) -> None:
        await plane.routes.refresh()  # a canary that starts (a new version) sets its first step now
        while not stopping.is_set():
            if plane.routes.affinity:
                try:
                    servers = await asyncio.to_thread(self.registered, list(plane.routes.affinity))
                    await asyncio.to_thread(plane.routes.publish, servers)
                except StackError as exc:
                    LOGGER.warning(f"cannot route the affinity APIs: {exc}")
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
        # controller only asks the affinity APIs' allocations what they hold.
        return list(self.targets)

    async def replace(self, replica: Probed, decision: Decision) -> None:
        raise NotImplementedError("Nomad replaces its own allocations")

    def events(self, api: str) -> list[str]:
        return []  # Nomad keeps its allocations' events: `stack status --nomad API` shows each one's last
