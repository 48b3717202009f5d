"""Waking a Nomad API scaled to zero: the activator's Waker on the Nomad target.

The autoscaler job serves the activator (stack.control.activator) as the Nomad service
`<project>-activator`. The Traefik job's file provider holds, for each API with
`min_replicas: 0`, a last-resort router (priority 1) to that service: while the
API's own service has instances, the Nomad provider's router wins; at zero
it has none, and requests land in the activator, which sets the job's count
to 1 through the scaling API, then forwards them to the first instance of the
API's Nomad service whose /readyz answers.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import nomad
from nomad.api.base import Requester

from stack.control.autoscale.config import ApiScaling, AutoscalerConfig
from stack.errors import ScalerBusy
from stack.targets.nomad.scaler import NomadScaler

BUSY_RETRIES = 120  # half-second tries while Nomad refuses a count during a deployment


class _Services(Requester):
    """Nomad's native service catalogue, /v1/service/<name> (python-nomad has no endpoint for it)."""

    ENDPOINT = "service"


class NomadWaker:
    def __init__(self, config: AutoscalerConfig, client: nomad.Nomad) -> None:
        self.project = config.project
        self.scaler = NomadScaler(config.project, client)
        self.apis: dict[str, ApiScaling] = {a.name: a for a in config.apis}
        self.zero = {a.name for a in config.routed if a.scale_to_zero}
        self.services = _Services(**client.requester_settings)
        self.session: aiohttp.ClientSession | None = None

    def known(self, api: str) -> bool:
        return api in self.zero and api in self.apis

    async def activate(self, api: str) -> None:
        scaling = self.apis[api]
        for _ in range(BUSY_RETRIES):
            if (await self.scaler.replicas(scaling)).current > 0:
                return
            try:
                await self.scaler.scale(scaling, 1, "woken by a request (scale from zero)")
                return
            except ScalerBusy:  # a deployment is still settling: Nomad takes the count right after
                await asyncio.sleep(0.5)
        raise RuntimeError(f"Nomad kept refusing a count of 1 for {self.project}-{api} (an active deployment)")

    async def ready_url(self, api: str) -> str | None:
        registrations = await asyncio.to_thread(self._registrations, f"{self.project}-{api}")
        if self.session is None or self.session.closed:
            self.session = aiohttp.ClientSession()
        for item in registrations:
            url = f"http://{item['Address']}:{item['Port']}"
            try:
                async with self.session.get(url + "/readyz", timeout=aiohttp.ClientTimeout(total=0.5)) as response:
                    if response.status == 200:
                        return url
            except (aiohttp.ClientError, TimeoutError):
                continue
        return None

    def start_error(self, api: str) -> str | None:
        return None  # a failing allocation is Nomad's to reschedule; the activator's wait is bounded

    def _registrations(self, name: str) -> list[dict[str, Any]]:
        try:
            found = self.services.request(name, method="get").json()
        except nomad.api.exceptions.BaseNomadException:
            return []
        return [r for r in found or [] if isinstance(r, dict) and r.get("Address") and r.get("Port")]
