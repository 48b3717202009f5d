"""The requests a replica holds, past admission and until answered: what a stuck replica answers itself.

Each one is registered by the task answering it (`serving.predict`), with when its async predict
started (a thread's call is timed by the pool). A replica that finds itself stuck (serving.health)
`abandon`s them: each task is cancelled and answers its request 504 with its request id; one whose
answer had started (a stream half sent) is cut instead. Its connections are what the watchdog thread
answers when the event loop itself is blocked.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web


class Flight:
    """One request past admission."""

    __slots__ = ("predicting", "request", "request_id", "responding")

    def __init__(self, request_id: str, request: web.Request, predicting: float | None) -> None:
        self.request_id = request_id
        self.request = request
        # Monotonic start of an async predict running on the event loop (a thread's call is the pool's to
        # time; a stream's chunks are its progress): None when this request's predict is not timed here.
        self.predicting = predicting
        self.responding = False  # its answer started (a stream may be half sent): it can only be cut


class Flights:
    def __init__(self) -> None:
        self.by_task: dict[asyncio.Task[Any], Flight] = {}
        self.abandoned: str | None = None  # why this replica gave up its requests (stuck), once it has

    def __len__(self) -> int:
        return len(self.by_task)

    def add(self, task: asyncio.Task[Any], flight: Flight) -> None:
        self.by_task[task] = flight

    def remove(self, task: asyncio.Task[Any]) -> None:
        self.by_task.pop(task, None)

    def all(self) -> list[Flight]:
        return list(self.by_task.values())

    def oldest_async(self) -> float | None:
        """When the longest-running async predict started (monotonic), or None."""
        starts = [f.predicting for f in self.by_task.values() if f.predicting is not None]
        return min(starts) if starts else None

    def abandon(self, reason: str) -> None:
        """Answer every request held now (504 with its request id) instead of leaving it to hang, and refuse new
        ones (`abandoned` is set) until the replica is replaced."""
        self.abandoned = reason
        for task, flight in list(self.by_task.items()):
            if flight.responding:  # half answered: close it (a cut stream reads as failed)
                if flight.request.transport is not None:
                    flight.request.transport.close()
            else:
                task.cancel()
