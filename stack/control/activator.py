"""The activator: the first request to an API scaled to zero wakes it, and is answered.

An API with `min_replicas: 0` and no replica is routed here (stack.routes adds
`/__stack/activate/<api>` in front of the path). Each request asks the target
for one replica (once: later requests join the same wake-up), waits until one
is ready, then is forwarded to it directly and streamed back; meanwhile the
routes are rewritten so that the requests after it go straight to replicas.

Bounded: at most `max_held` requests wait (beyond: 503), each at most the
API's start timeout (then 503 with `Retry-After` from the cold starts seen so
far); a replica that fails to start answers every held request 503 with its
start error. Served by the local supervisor and the Compose controller, each
with its own `Waker`.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Protocol

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from yarl import URL

from stack.routes import ACTIVATE as PREFIX  # what the routes put in front of the path
from stack.routes import PROBE_HEADER

MAX_HELD = 1000
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}


class Waker(Protocol):
    async def activate(self, api: str) -> None:
        """Ask for one replica of `api` if it has none (called once per wake-up)."""

    async def ready_url(self, api: str) -> str | None:
        """A replica of `api` ready for requests (http://host:port), or None yet."""

    def start_error(self, api: str) -> str | None:
        """Why `api` cannot start, once its replicas keep failing; None while it may still come up."""

    def known(self, api: str) -> bool: ...


class Activator:
    def __init__(self, waker: Waker, timeout: float = 600.0, registry: CollectorRegistry | None = None) -> None:
        self.waker = waker
        self.timeout = timeout
        self.held: dict[str, int] = {}
        self.last_request: dict[str, float] = {}  # api -> unix time of the newest request held here
        self.waking: dict[str, asyncio.Task[float]] = {}  # api -> the wake-up in progress (its cold start)
        self.cold_start_s: float | None = None  # the last one observed, for Retry-After
        self.session: aiohttp.ClientSession | None = None
        self.cold_starts = Counter(
            "stack_activator_cold_starts", "Wake-ups of an API scaled to zero.", ["api"], registry=registry
        )
        self.cold_start_seconds = Histogram(
            "stack_activator_cold_start_seconds",
            "From the first held request to a ready replica.",
            ["api"],
            buckets=(0.5, 1, 2, 3, 5, 7.5, 10, 15, 30, 60, 120, 300),
            registry=registry,
        )
        self.requests_held = Gauge(
            "stack_activator_requests_held", "Requests waiting for an API to wake up.", ["api"], registry=registry
        )

    async def handle(self, request: web.Request) -> web.StreamResponse:
        api = request.match_info["api"]
        if not self.waker.known(api):
            return _error(404, f"no API named {api!r}")
        if request.headers.get(PROBE_HEADER):  # our own check through the gateway: it wakes nothing
            return _error(503, f"API {api} is scaled to zero", self._retry_after())
        if sum(self.held.values()) >= MAX_HELD:
            return _error(503, f"{MAX_HELD} requests already wait for APIs to wake up", self._retry_after())
        self.last_request[api] = time.time()
        self.held[api] = self.held.get(api, 0) + 1
        self.requests_held.labels(api).inc()
        try:
            url = await self._ready(api)
        except _StartFailed as failed:
            return _error(503, f"API {api} could not start: {failed}", self._retry_after())
        except TimeoutError:
            return _error(503, f"API {api} did not start within {self.timeout:g}s", self._retry_after())
        finally:
            self.held[api] -= 1
            self.requests_held.labels(api).dec()
        return await self._forward(request, url)

    async def _ready(self, api: str) -> str:
        url = await self.waker.ready_url(api)
        if url is not None:
            return url
        wake = self.waking.get(api)
        if wake is None or wake.done():
            wake = self.waking[api] = asyncio.get_running_loop().create_task(self._wake(api))
        await asyncio.wait_for(asyncio.shield(wake), self.timeout)
        found = await self.waker.ready_url(api)
        if found is None:  # it came up and went away again at once: try the next one
            raise _StartFailed(self.waker.start_error(api) or "its replica stopped right after starting")
        return found

    async def _wake(self, api: str) -> float:
        started = time.monotonic()
        self.cold_starts.labels(api).inc()
        try:
            await self.waker.activate(api)
        except Exception as exc:  # the target refused: every held request hears why
            raise _StartFailed(str(exc)) from exc
        while await self.waker.ready_url(api) is None:
            error = self.waker.start_error(api)
            if error:
                raise _StartFailed(error)
            if time.monotonic() - started > self.timeout:  # nobody waits any more: stop looking
                raise TimeoutError
            await asyncio.sleep(0.05)
        took = time.monotonic() - started
        self.cold_start_seconds.labels(api).observe(took)
        self.cold_start_s = took
        return took

    def _retry_after(self) -> str:
        return str(max(1, math.ceil(self.cold_start_s or 5)))

    async def _forward(self, request: web.Request, base: str) -> web.StreamResponse:
        if self.session is None:
            self.session = aiohttp.ClientSession(auto_decompress=False)
        # The path as the client sent it (still percent-encoded), less the activator's prefix.
        prefix = f"{PREFIX}/{request.match_info['api']}"
        raw = request.rel_url.raw_path
        tail = raw[len(prefix) :] if raw.startswith(prefix) else "/"
        query = f"?{request.rel_url.raw_query_string}" if request.rel_url.raw_query_string else ""
        url = URL(base + (tail or "/") + query, encoded=True)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        body = await request.read()
        try:
            async with self.session.request(
                request.method,
                url,
                headers=headers,
                data=body,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
            ) as upstream:
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                for key, value in upstream.headers.items():
                    if key.lower() not in HOP_BY_HOP:
                        response.headers.add(key, value)
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
        except aiohttp.ClientError as exc:
            return _error(502, f"the woken replica failed while answering: {exc}")

    async def close(self) -> None:
        for task in self.waking.values():
            task.cancel()
        if self.session is not None:
            await self.session.close()


class _StartFailed(Exception):
    pass


def _error(status: int, message: str, retry_after: str | None = None) -> web.Response:
    headers = {"Retry-After": retry_after} if retry_after else None
    return web.json_response({"error": message}, status=status, headers=headers)
