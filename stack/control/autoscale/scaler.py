"""The one interface the autoscaler drives, whatever runs the replicas."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from stack.control.autoscale.config import ApiScaling
from stack.errors import ScalerBusy

__all__ = ["Replicas", "Scaler", "ScalerBusy"]


@dataclass(frozen=True)
class Replicas:
    current: int  # replicas asked for and not draining: ready + starting
    ready: int  # replicas the router sends traffic to
    busy: str = ""  # why the count must not change now (a rolling update), or ""


class Scaler(Protocol):
    async def replicas(self, api: ApiScaling) -> Replicas: ...

    async def scale(self, api: ApiScaling, count: int, reason: str) -> None: ...
