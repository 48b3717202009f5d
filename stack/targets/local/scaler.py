"""The local target's scalers: in the supervisor's own process, and from outside it.

`InProcessScaler` is what the supervisor's built-in autoscaler drives: it sets
an API's desired count and wakes the reconcile loop, which starts and drains
replicas. `SupervisorScaler` does the same from another process, through the
supervisor's control API (`Target.scaler()` of the local target).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import aiohttp

from stack.autoscale.config import ApiScaling
from stack.autoscale.scaler import Replicas
from stack.errors import ScalerError, StackError
from stack.targets.local.control import call_async

if TYPE_CHECKING:
    from stack.targets.local.supervisor import Supervisor


class InProcessScaler:
    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    async def replicas(self, api: ApiScaling) -> Replicas:
        state = self.supervisor.apis[api.name]
        ready = state.serving(self.supervisor.serving.get(api.name, set()))
        busy = "rolling update in progress" if api.name in self.supervisor.updating else ""
        return Replicas(state.desired, len(ready), busy)

    async def scale(self, api: ApiScaling, count: int, reason: str) -> None:
        state = self.supervisor.apis[api.name]
        state.event(f"autoscaler: {state.desired} -> {count}: {reason}")
        state.desired = count
        self.supervisor.wake.set()


class SupervisorScaler:
    def __init__(self, control_socket: str) -> None:
        self.control_socket = control_socket

    async def replicas(self, api: ApiScaling) -> Replicas:
        status = await self._call("GET", "/status")
        for item in status.get("apis", []):
            if item["name"] == api.name:
                busy = "rolling update in progress" if item.get("status") == "updating" else ""
                return Replicas(int(item["desired"]), int(item["ready"]), busy)
        raise ScalerError(f"the local supervisor runs no API {api.name!r}")

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
