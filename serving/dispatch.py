"""How a request's payload reaches predict: awaited on the event loop (async predict), run on the thread
pool (sync predict: waiting there is "queued"), or gathered into a batch (server-side batching) — traced
when the request is sampled, and given up when its client is gone.

serving.predict admits the request and answers it; this module is the call in between.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from typing import Any

from aiohttp import web

from serving import tracing
from serving.batching import Batcher
from serving.codec import Headers
from serving.config import BatchingConfig
from serving.keys import RANK_KEY
from serving.loader import Handler
from serving.metrics import ApiMetrics
from serving.pool import PredictPool


class Dispatch:
    def __init__(
        self, pool: PredictPool, metrics: ApiMetrics, tracer: tracing.Tracer | None, count_gauges: bool
    ) -> None:
        self._pool = pool
        self._metrics = metrics
        self._tracer = tracer
        self._count_gauges = count_gauges  # multiprocess mode: the queued gauge is counted here
        self._handler: Handler | None = None
        self._call: Callable[[Any, Any, Any], Any] = not_loaded
        self._batcher: Batcher | None = None

    def bind(self, handler: Handler, call: Callable[[Any, Any, Any], Any], batching: BatchingConfig | None) -> None:
        """The predictor is loaded: `call` is its predict; with `batching`, requests are gathered first."""
        self._handler, self._call = handler, call
        if batching is not None:
            self._batcher = Batcher(
                self._run_batch,
                batching.max_batch_size,
                batching.batch_interval,
                max(batching.max_in_flight, 1),
                self._metrics,
                count_queued=self._count_gauges,
                eager=batching.eager,
            )
            self._batcher.start()

    def waiting(self) -> int:
        """Requests waiting for their batch."""
        return self._batcher.waiting() if self._batcher else 0

    async def stop(self) -> None:
        if self._batcher:
            await self._batcher.stop()

    async def predict(
        self, request: web.Request, payload: Any, query: dict[str, str] | None, group: str | None = None
    ) -> Any:
        """`group`: the request's affinity value (serving.affinity): a batch holds requests of one value only."""
        handler, call = self._handler, self._call
        if handler is None:
            return not_loaded(payload, query, request.headers)
        if self._batcher is None:
            if handler.is_async_gen:
                return call(payload, query, request.headers)
            if handler.is_async:
                # One turn of the loop before an async predict: the loop then takes the requests of
                # every ready connection before it answers any. Measured (bench/runtime.py, W0 both at
                # once), CPU per request falls by about a tenth; a lone request waits one turn (µs).
                await asyncio.sleep(0)
                if self._tracer is not None and self._tracer.sampled():
                    return await tracing.traced_async(self._tracer, call(payload, query, request.headers))
                return await call(payload, query, request.headers)

        def is_gone() -> bool:
            return request.transport is None or request.transport.is_closing()

        if self._batcher is not None:
            # With tracing, the batch links to a sampled request's span; its wait is its queue span.
            traced = (self._tracer.current(), tracing.now_ns()) if self._tracer and self._tracer.sampled() else None
            return await self._batcher.submit(
                (payload, query, request.headers, traced), is_gone, group, request.get(RANK_KEY, 1)
            )
        # Waiting in the pool's queue is "queued"; the worker counts it down when it starts.
        if self._count_gauges:
            self._metrics.queued.inc()
        # The predictor thread sees the request's context: its log lines and its calls carry the request.
        context = contextvars.copy_context()
        work = functools.partial(context.run, call, payload, query, request.headers)
        if self._tracer is not None and self._tracer.sampled():
            return await tracing.traced_thread(self._tracer, self._pool.run, work, is_gone)
        rank = request.get(RANK_KEY, 1) if self._pool.ordered else 1  # priorities only with named keys'
        return await self._pool.run(work, is_gone, rank=rank)

    async def _run_batch(self, items: list[tuple[Any, ...]]) -> Any:
        handler = self._handler
        assert handler is not None
        call = functools.partial(
            handler.call,
            payload=[item[0] for item in items],
            query_params=[item[1] for item in items],
            headers=[Headers(item[2]) for item in items],
        )
        traced = [item[3] for item in items if item[3] is not None]
        if self._tracer is not None and traced:  # only the sampled requests' spans link to the batch
            return await tracing.traced_batch(self._tracer, self._pool.run, call, handler.is_async, traced)
        if handler.is_async:
            return await call()
        return await self._pool.run(call)


def not_loaded(payload: Any, query: Any, headers: Any) -> Any:
    raise RuntimeError("predict called before the predictor was loaded")
