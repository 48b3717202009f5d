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
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

_STOP = object()


class ClientGone(Exception):
    """The client disconnected while its request was queued; predict never ran."""


class PredictPool:
    def __init__(self, threads: int, on_start: Callable[[], None] | None = None) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._on_start = on_start  # called in the worker when a queued call starts
        self._started = [0.0] * threads  # per thread: monotonic start of its current call (0: idle)
        self._threads = [
            threading.Thread(target=self._work, args=(i,), name=f"predict-{i}", daemon=True) for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def queued(self) -> int:
        return self._queue.qsize()

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
        self, call: Callable[[], Any], is_gone: Callable[[], bool] | None = None, counted: bool = True
    ) -> asyncio.Future[Any]:
        """`counted`: the call is a request waiting in the queue (False: the predictor's __init__)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.put((call, future, loop, is_gone, counted))
        return future

    def shutdown(self) -> None:
        for _ in self._threads:
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
