"""Scaling a local stack from outside its supervisor, through the supervisor's control API.

`SupervisorScaler` is the local target's `Target.scaler()`: what an autoscaler
in another process drives. (The supervisor's own autoscaler scales its fleet
directly: stack.targets.local.fleet.)
"""

from __future__ import annotations

from typing import Any

import aiohttp

from stack.control.autoscale.config import ApiScaling
from stack.control.autoscale.scaler import Replicas
from stack.errors import ScalerError, StackError
from stack.status import ApiPhase, StackStatus
from stack.targets.local.control import call_async


class SupervisorScaler:
    def __init__(self, control_socket: str) -> None:
        self.control_socket = control_socket

    async def replicas(self, api: ApiScaling) -> Replicas:
        status = StackStatus.from_dict(await self._call("GET", "/status"))
        found = status.api(api.name)
        if found is None:
            raise ScalerError(f"the local supervisor runs no API {api.name!r}")
        busy = "rolling update in progress" if found.status == ApiPhase.UPDATING else ""
        return Replicas(found.desired, found.ready, busy)

    async def scale(self, api: ApiScaling, count: int, reason: str) -> None:
        body = {"api": api.name, "replicas": count, "reason": reason, "autoscaler": True}
        await self._call("POST", "/scale", body)

    async def _call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        try:
            return await call_async(self.control_socket, method, path, body)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ScalerError(f"the local supervisor does not answer: {exc}") from exc
        except StackError as exc:
            raise ScalerError(str(exc)) from exc
