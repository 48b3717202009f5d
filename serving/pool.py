"""The threads that run a synchronous `predict`.

Requests go straight into one queue that `threads_per_process` threads drain;
each result comes back to the event loop with one `call_soon_threadsafe`.
Compared with a semaphore in front of a ThreadPoolExecutor, a busy thread
takes the next request without a round trip through the event loop, which
on one core is most of the cost of a fast predict. The queue's length is the
replica's "queued" count; a request whose client left, or whose timeout
passed, while it waited is skipped without running. Each thread notes when
its current call started: a call running far too long is a stuck predict
(serving.health).

With named keys of different priorities (`gateway.keys`), the queue is ordered: the threads take the
highest priority first, first in first out within one; `evict` takes back the newest waiting request of
a lower priority than a newcomer (a full replica refuses the lowest first).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from serving.errors import HTTPError

_STOP = object()


class ClientGone(Exception):
    """The client disconnected while its request was queued; predict never ran."""


class _Ordered:
    """A queue the threads take from by priority (lower rank first), then by arrival."""

    def __init__(self) -> None:
        self._heap: list[list[Any]] = []  # [rank, seq, item, live]
        self._ready = threading.Condition()
        self._seq = itertools.count()
        self._live = 0

    def put(self, item: Any, rank: int = 1) -> None:
        with self._ready:
            heapq.heappush(self._heap, [rank, next(self._seq), item, True])
            self._live += 1
            self._ready.notify()

    def get(self) -> Any:
        with self._ready:
            while True:
                while not self._heap:
                    self._ready.wait()
                entry = heapq.heappop(self._heap)
                if entry[3]:
                    self._live -= 1
                    return entry[2]

    def qsize(self) -> int:
        return self._live

    def evict(self, rank: int) -> Any | None:
        """Take back the newest waiting item of a rank above `rank` (the lowest priority first), or None."""
        with self._ready:
            waiting = [e for e in self._heap if e[3] and e[0] > rank]
            if not waiting:
                return None
            victim = max(waiting, key=lambda e: (e[0], e[1]))
            victim[3] = False
            self._live -= 1
            return victim[2]


class PredictPool:
    def __init__(self, threads: int, on_start: Callable[[], None] | None = None, ordered: bool = False) -> None:
        # ordered: named keys with priorities; a plain queue otherwise (the faster one on the hot path)
        self._queue: Any = _Ordered() if ordered else queue.SimpleQueue()
        self.ordered = ordered
        self._on_start = on_start  # called in the worker when a queued call starts
        self._started = [0.0] * threads  # per thread: monotonic start of its current call (0: idle)
        self._threads = [
            threading.Thread(target=self._work, args=(i,), name=f"predict-{i}", daemon=True) for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def queued(self) -> int:
        return int(self._queue.qsize())

    def saturated_since(self) -> float | None:
        """When the last of its threads took the call it is still running (monotonic), while every thread is
        busy; None while one is free."""
        started = list(self._started)
        return max(started) if started and all(started) else None

    def oldest_start(self) -> float | None:
        """When the longest-running call now running started (monotonic), or None when every thread is idle."""
        running = [started for started in self._started if started]
        return min(running) if running else None

    def run(
        self,
        call: Callable[[], Any],
        is_gone: Callable[[], bool] | None = None,
        counted: bool = True,
        rank: int = 1,
    ) -> asyncio.Future[Any]:
        """`counted`: the call is a request waiting in the queue (False: the predictor's __init__); `rank`: its
        priority in an ordered pool (0 high, 1 normal, 2 low)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if self.ordered:
            self._queue.put((call, future, loop, is_gone, counted), rank)
        else:
            self._queue.put((call, future, loop, is_gone, counted))
        return future

    def evict(self, rank: int, retry_after: int) -> bool:
        """A newcomer of `rank` found the replica full: the newest waiting request of a lower priority is
        answered 503 instead (True), if there is one."""
        if not self.ordered:
            return False
        item = self._queue.evict(rank)
        if item is None:
            return False
        _call, future, loop, _gone, counted = item
        if counted and self._on_start is not None:
            self._on_start()  # it leaves the queue: the queued count goes down as if it had started
        refused = HTTPError(
            503, "replica is full and a request of higher priority came; retry later", {"Retry-After": str(retry_after)}
        )
        loop.call_soon(_settle, future, None, refused)
        return True

    def shutdown(self) -> None:
        for _ in self._threads:
            if self.ordered:
                self._queue.put(_STOP, 99)
            else:
                self._queue.put(_STOP)

    def _work(self, index: int) -> None:
        started = self._started
        while (item := self._queue.get()) is not _STOP:
            call, future, loop, is_gone, counted = item
            if self._on_start is not None and counted:
                self._on_start()
            if future.cancelled():  # timed out while queued; reading the flag from here is benign
                continue
            if is_gone is not None and is_gone():
                loop.call_soon_threadsafe(_settle, future, None, ClientGone())
                continue
            started[index] = time.monotonic()
            try:
                result, error = call(), None
            except BaseException as exc:
                result, error = None, exc
            started[index] = 0.0
            try:
                loop.call_soon_threadsafe(_settle, future, result, error)
            except RuntimeError:  # the loop closed during shutdown; nobody waits any more
                return


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
