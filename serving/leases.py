"""Releasing a named key's lease (`gateway.keys` with `concurrency`): the gateway asked the stack's controller
before the request came here, and the controller counts it in flight until this replica says it is done
(stack.control.tenants). The release goes out before the answer does, so a client sending its next request
the moment it has this answer finds its slot free. A release that fails is logged: the lease lapses by
itself in the controller."""

from __future__ import annotations

import logging

import aiohttp

LOGGER = logging.getLogger("serving")
RELEASE = "/__stack/release"  # stack.control.tenants.RELEASE
LEASES_ENV = "STACK_LEASES_URL"  # where a target that learns the controller's address late puts it (Nomad)
TIMEOUT = 2.0


class Leases:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    async def release(self, lease: str) -> None:
        if not lease or lease == "-" or len(lease) > 64 or not lease.replace("-", "").isalnum():
            return
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT))
        try:
            async with self._session.post(f"{self.url}{RELEASE}/{lease}") as response:
                await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            LOGGER.warning(f"could not release lease {lease} at {self.url}: {exc}; it lapses by itself")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
