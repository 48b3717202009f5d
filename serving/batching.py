"""Server-side batching on an asyncio queue with futures.

Requests wait in a queue; a collector takes up to `max_batch_size` of them,
waiting at most `batch_interval` after the first one for the batch to fill,
and hands the list to `predict`. Each request has its own future, so a batch
that fails (an exception, or a result list of the wrong length) fails only its
own requests, and a request whose client left or whose timeout passed is
dropped before its batch runs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from serving.metrics import ApiMetrics

RunBatch = Callable[[list[Any]], Awaitable[Any]]


class BatchMismatch(Exception):
    pass


@dataclass
class _Item:
    payload: Any
    future: asyncio.Future[Any]
    is_gone: Callable[[], bool] = field(default=lambda: False)


class Batcher:
    def __init__(
        self,
        run_batch: RunBatch,
        max_batch_size: int,
        batch_interval: float,
        parallel: int,
        metrics: ApiMetrics,
        count_queued: bool,
    ) -> None:
        self._run_batch = run_batch
        self._max = max_batch_size
        self._interval = batch_interval
        self._slots = asyncio.Semaphore(parallel)  # batches running at once: one per predictor thread
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._full = asyncio.Event()
        self._holding = 0  # items the collector took out of the queue for the batch it is filling
        self._metrics = metrics
        self._count_queued = count_queued  # keep the queued gauge by hand (multiprocess mode)
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._collect_forever())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    async def submit(self, payload: Any, is_gone: Callable[[], bool]) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Item(payload, future, is_gone))
        if self._count_queued:
            self._metrics.queued.inc()
        if self._queue.qsize() + self._holding >= self._max:
            self._full.set()  # a full batch goes at once, without waiting out the interval
        return await future

    async def _collect_forever(self) -> None:
        while True:
            await self._slots.acquire()
            batch = await self._collect()
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _collect(self) -> list[_Item]:
        batch = [await self._queue.get()]
        self._holding = 1
        try:
            if self._queue.qsize() + 1 < self._max:
                self._full.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self._interval)
            while len(batch) < self._max and not self._queue.empty():
                batch.append(self._queue.get_nowait())
        finally:
            self._holding = 0
        if self._count_queued:
            self._metrics.queued.dec(len(batch))
        return batch

    def waiting(self) -> int:
        return self._queue.qsize()

    async def _run(self, batch: list[_Item]) -> None:
        try:
            live = [item for item in batch if not item.future.done() and not item.is_gone()]
            for item in batch:
                if item not in live and not item.future.done():
                    item.future.cancel()
            if not live:
                return
            self._metrics.batch_size.observe(len(live))
            try:
                results = _as_list(await self._run_batch([item.payload for item in live]), len(live))
            except BaseException as exc:
                for item in live:
                    if not item.future.done():
                        item.future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                return
            for item, result in zip(live, results, strict=True):
                if item.future.done():
                    continue
                # An exception in the result list fails that request alone (e.g. HTTPError(422, ...)).
                if isinstance(result, BaseException):
                    item.future.set_exception(result)
                else:
                    item.future.set_result(result)
        finally:
            self._slots.release()


def _as_list(results: Any, expected: int) -> list[Any] | tuple[Any, ...]:
    """The batch's results as a list: a numpy array or tensor with one row per request is split
    with one `tolist()` for the whole batch, not per item."""
    if not isinstance(results, (list, tuple)) and hasattr(results, "tolist") and getattr(results, "ndim", 0) >= 1:
        results = results.tolist()
    if not isinstance(results, (list, tuple)):
        raise BatchMismatch(
            f"with batching on, predict must return a list of {expected} results; "
            f"it returned a {type(results).__name__}"
        )
    if len(results) != expected:
        raise BatchMismatch(f"predict got a batch of {expected} payloads but returned {len(results)} results")
    return results
