"""`post_predict`: run after the answer is sent, off the request's path (Cortex's semantics)."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import time
from typing import Any

from aiohttp import web

from serving.codec import Headers
from serving.loader import Handler
from serving.pool import PredictPool
from serving.tracing import Tracer

LOGGER = logging.getLogger("serving")


class PostPredict:
    def __init__(self, pool: PredictPool, tracer: Tracer | None) -> None:
        self._pool = pool
        self._tracer = tracer
        self._background: set[asyncio.Task[Any]] = set()

    async def send_then_run(
        self,
        request: web.Request,
        response: web.StreamResponse,
        result: Any,
        handler: Handler,
        payload: Any,
        query: dict[str, str] | None,
    ) -> None:
        """Send `response` whole, then start `post_predict` in the background."""
        if not response.prepared:
            await response.prepare(request)
            await response.write_eof()
        # As in Cortex, `response` is what predict returned; the HTTP status is `status_code`.
        call = functools.partial(
            handler.call,
            response=result,
            status_code=response.status,
            payload=payload,
            query_params=query,
            headers=Headers(request.headers),
        )
        parent = self._tracer.current() if self._tracer is not None and self._tracer.sampled() else None
        task = asyncio.get_running_loop().create_task(self._run(call, handler.is_async, parent))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _run(self, call: Any, is_async: bool, parent: Any) -> None:
        started, error = time.time_ns(), None
        try:
            if is_async:
                await call()
            else:  # in the request's context: its log lines carry the request id
                await self._pool.run(functools.partial(contextvars.copy_context().run, call))
        except Exception as exc:
            error = exc
            LOGGER.exception("post_predict failed")
        if self._tracer is not None and parent is not None:
            self._tracer.phase("post_predict", started, time.time_ns(), error, parent=parent)

    async def close(self) -> None:
        """Wait for the post_predicts still running."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
