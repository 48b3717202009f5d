"""The Nomad target's fleet: Nomad itself keeps the allocations (restarts, reschedules, its own checks with
`check_restart`); the controller only keeps the splitters' routes current and says when a rollout runs."""

from __future__ import annotations

import asyncio

from stack.control.liveness import Decision, Probed
from stack.control.runtime import ControlPlane
from stack.targets.nomad.api import NomadApi
from stack.targets.nomad.splits import rolling_out


class NomadFleet:
    def __init__(self, nomad: NomadApi, project: str) -> None:
        self.nomad = nomad
        self.project = project

    async def run(self, plane: ControlPlane, stopping: asyncio.Event) -> None:
        await plane.routes.refresh()  # a canary that starts (a new version) sets its first step now
        await stopping.wait()

    def manual(self, api: str) -> bool:
        return False  # NomadScaler reports a count set by hand as busy (the job's scaling events say so)

    def rolling_out(self, api: str) -> str | None:
        return rolling_out(self.nomad, f"{self.project}-{api}")

    def probe_targets(self) -> list[Probed]:
        return []  # Nomad asks /healthz itself (the job's service check) and restarts a stuck task (check_restart)

    async def replace(self, replica: Probed, decision: Decision) -> None:
        raise NotImplementedError("Nomad replaces its own allocations")

    def events(self, api: str) -> list[str]:
        return []  # Nomad keeps its allocations' events: `stack status --nomad API` shows each one's last
