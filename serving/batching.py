"""Server-side batching on an asyncio queue with futures.

Requests wait in a queue; a collector takes up to `max_batch_size` of them,
waiting at most `batch_interval` after the first one for the batch to fill,
and hands the list to `predict`. Up to `max_in_flight` batches run at once
(two by default): the next batch is gathered, and its inputs built, while the
previous one runs, and a batch still short when its interval ends keeps
growing until a running batch finishes — under load every batch is full. Each request has its own future, so a batch
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
        eager: bool = False,
    ) -> None:
        self._eager = eager
        self._run_batch = run_batch
        self._max = max_batch_size
        self._interval = batch_interval
        self._parallel = max(parallel, 1)  # batches running at once
        self._busy = 0  # batches running now
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._wake = asyncio.Event()  # a request arrived, or a batch finished
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
        self._wake.set()
        return await future

    async def _collect_forever(self) -> None:
        while True:
            batch = await self._collect()
            self._busy += 1
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _collect(self) -> list[_Item]:
        """The next batch: full, or whatever came within `batch_interval` of its first request.

        It is gathered while earlier batches run, and dispatched as soon as a slot is free: a
        batch that is not full when its interval ends keeps taking requests until a running
        batch finishes, so under load batches are full and the model never waits for one.
        """
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        deadline = loop.time() + self._interval
        while True:
            while len(batch) < self._max and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            slot_free = self._busy < self._parallel
            if slot_free and (len(batch) >= self._max or loop.time() >= deadline or (self._eager and not self._busy)):
                break
            self._wake.clear()
            if len(batch) < self._max and not self._queue.empty():
                continue  # arrived between the drain and the clear
            # Wait for a request (while the batch can grow) or a finished batch (once the interval is out).
            timeout = max(deadline - loop.time(), 0.0) if slot_free else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
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
            self._busy -= 1
            self._wake.set()


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
