"""Server-side batching: requests wait in a queue, batches go to `predict`.

A batch is sent when it is full (`max_batch_size`), when its oldest request
has waited `batch_interval`, or at once when `eager` and no batch is running.
Up to `max_in_flight` batches run at once (two by default): the next batch's
inputs are built while the previous one runs, and a batch that is due while
every slot is busy keeps growing until a running batch finishes, so under
load every batch is full and the model never waits for one.

There is no collector task: whether a batch is due is decided by plain
callbacks when requests arrive (once per event-loop turn, so a burst that
arrives together is batched together), when the oldest request's interval
ends (one timer), and when a batch finishes. With model affinity (`networking.affinity`), a batch holds the
requests of one model only (the oldest request's, and those of its model behind it, in order); the others
wait for the next batch. With named keys' priorities (`gateway.keys`), the queue is kept highest priority
first, arrival order within one: batches take the most urgent requests. Each request has its own
future, so a batch that fails (an exception, or a result list of the wrong
length) fails only its own requests, and a request whose client left or
whose timeout passed is dropped before its batch is formed.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from serving.metrics import ApiMetrics

RunBatch = Callable[[list[Any]], Awaitable[Any]]


class BatchMismatch(Exception):
    pass


class _Item:
    # Compared by identity (no dataclass __eq__: comparing two requests must never compare payloads).
    __slots__ = ("arrived", "future", "group", "is_gone", "payload", "rank")

    def __init__(
        self,
        payload: Any,
        future: asyncio.Future[Any],
        is_gone: Callable[[], bool],
        arrived: float,
        group: str | None = None,
        rank: int = 1,
    ) -> None:
        self.group = group
        self.rank = rank
        self.payload = payload
        self.future = future
        self.is_gone = is_gone
        self.arrived = arrived


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
        self._pending: deque[_Item] = deque()
        self._metrics = metrics
        self._count_queued = count_queued  # keep the queued gauge by hand (multiprocess mode)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None  # the oldest request's interval ends
        self._check_soon = False  # a dispatch check is scheduled for this loop turn's end
        self._running: set[asyncio.Task[None]] = set()
        self._grouped = False  # a request with an affinity value came: batches are formed per value
        self._ranked = False  # a request of a named key's priority came: the queue is kept in priority order

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._pending:  # nobody will run them: their requests end as cancelled
            self._pending.popleft().future.cancel()
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    def submit(
        self, payload: Any, is_gone: Callable[[], bool], group: str | None = None, rank: int = 1
    ) -> asyncio.Future[Any]:
        """Queue one request; the future is its result (cancel it to withdraw the request). Requests of
        different `group`s (affinity values) never share a batch."""
        loop = self._loop
        assert loop is not None, "Batcher.start() first"
        future: asyncio.Future[Any] = loop.create_future()
        if group is not None:
            self._grouped = True
        item = _Item(payload, future, is_gone, loop.time(), group, rank)
        if rank != 1 or self._ranked:  # named keys' priorities: higher ranks wait behind, in arrival order
            self._ranked = True
            at = len(self._pending)
            while at > 0 and self._pending[at - 1].rank > rank:
                at -= 1
            self._pending.insert(at, item)
        else:
            self._pending.append(item)
        if self._count_queued:
            self._metrics.queued.inc()
        if not self._check_soon:
            # After the other requests that arrived in this turn of the loop have queued too.
            self._check_soon = True
            loop.call_soon(self._check)
        return future

    def waiting(self) -> int:
        return len(self._pending)

    def _check(self) -> None:
        self._check_soon = False
        self._dispatch()

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch()

    def _dispatch(self) -> None:
        """Send every batch that is due while a slot is free; else arm the timer for the next one."""
        loop = self._loop
        assert loop is not None
        pending = self._pending
        while pending and self._busy < self._parallel:
            if self._front_size() < self._max and not (self._eager and not self._busy):
                due = pending[0].arrived + self._interval
                if loop.time() < due:
                    if self._timer is None or self._timer.when() > due:
                        if self._timer is not None:
                            self._timer.cancel()
                        self._timer = loop.call_at(due, self._on_timer)
                    return
            batch = self._take()
            if batch:
                self._busy += 1
                task = loop.create_task(self._run(batch))
                self._running.add(task)
                task.add_done_callback(self._running.discard)

    def _front_size(self) -> int:
        """How many requests the next batch could take now (those of the oldest request's group)."""
        if not self._grouped:
            return len(self._pending)
        group = self._pending[0].group
        return sum(1 for item in self._pending if item.group == group)

    def _take(self) -> list[_Item]:
        """Up to max_batch_size live requests from the front (of the oldest one's group); withdrawn ones are
        dropped on the way."""
        if self._grouped:
            return self._take_group()
        pending, taken = self._pending, 0
        batch: list[_Item] = []
        while pending and len(batch) < self._max:
            item = pending.popleft()
            taken += 1
            if item.future.done():  # timed out (cancelled) while it waited
                continue
            if item.is_gone():
                item.future.cancel()
                continue
            batch.append(item)
        if self._count_queued:
            self._metrics.queued.dec(taken)
        return batch

    def _take_group(self) -> list[_Item]:
        group = self._pending[0].group
        batch: list[_Item] = []
        kept: deque[_Item] = deque()
        taken = 0
        while self._pending:
            item = self._pending.popleft()
            if item.group != group or len(batch) >= self._max:
                kept.append(item)
                continue
            taken += 1
            if item.future.done():
                continue
            if item.is_gone():
                item.future.cancel()
                continue
            batch.append(item)
        self._pending.extend(kept)  # in place: _dispatch holds the deque
        if self._count_queued:
            self._metrics.queued.dec(taken)
        return batch

    async def _run(self, batch: list[_Item]) -> None:
        try:
            self._metrics.batch_size.observe(len(batch))
            try:
                results = _as_list(await self._run_batch([item.payload for item in batch]), len(batch))
            except BaseException as exc:
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                return
            for item, result in zip(batch, results, strict=True):
                if item.future.done():
                    continue
                # An exception in the result list fails that request alone (e.g. HTTPError(422, ...)).
                if isinstance(result, BaseException):
                    item.future.set_exception(result)
                else:
                    item.future.set_result(result)
        finally:
            self._busy -= 1
            self._dispatch()


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
