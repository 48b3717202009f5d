"""The predict path of one replica: admission, the payload, predict (batched, timed, streamed), the answer.

Everything a prediction request touches lives here, and nothing else does:
this is the hot path (bench/runtime.py's W0 measures it against a bare aiohttp
handler). Errors become answers through one table (serving.failures).
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import logging
import math
import os
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from aiohttp import web

from serving import tracing
from serving.affinity import AffinityTracker
from serving.calls import CALLER_HEADER, CURRENT, TIMEOUT_HEADER, RequestContext
from serving.codec import QueryParams, encode, encode_any, error_response, read_payload
from serving.config import ServingConfig
from serving.dispatch import Dispatch, not_loaded
from serving.errors import HTTPError
from serving.failures import PredictTimeout, failure_of
from serving.flights import Flight, Flights
from serving.keys import KEY, LEASE_HEADER, RANK, RANK_KEY, ApiKeys, KeyEntry, carries_key, find_key
from serving.leases import LEASES_ENV, Leases
from serving.loader import LoadedPredictor
from serving.logs import REQUEST_ID, replica_name
from serving.metrics import ApiMetrics
from serving.openapi import payload_validator
from serving.pool import ClientGone, PredictPool
from serving.post_predict import PostPredict
from serving.protocols import openai_error, v2_error
from serving.streaming import StreamFailed, is_stream, stream
from serving.usage import Usage

LOGGER = logging.getLogger("serving")
CLIENT_GONE = 499  # nginx's code for "client closed the request"; only ever logged and counted
THROUGHPUT_WINDOW = 10.0  # seconds of completions that Retry-After is computed from


class Predictions:
    """Answers `POST /` (and the protocols' predict routes) for one replica."""

    def __init__(self, config: ServingConfig, metrics: ApiMetrics, pool: PredictPool, count_gauges: bool) -> None:
        self.config = config
        self.metrics = metrics
        self._pool = pool
        self._count_gauges = count_gauges  # multiprocess mode: the gauges are counted here, not read at scrape
        self.predictor: LoadedPredictor | None = None
        self.in_flight = 0
        self.last_request_at = 0.0  # monotonic; draining waits until requests stop arriving
        self._throughput = Throughput(config.threads_per_process)  # what Retry-After is computed from
        self.keys = ApiKeys(config.api_keys, config.api_keys_file)  # re-read when the file changes
        self.usage = Usage(config.api, config.gpus, metrics.registry_for_extra())  # per named key
        leases_url = os.environ.get(LEASES_ENV) or config.leases_url  # Nomad renders it into the environment
        self._leases = Leases(leases_url) if leases_url else None
        self._holding: dict[str, None] = {}  # the leases of the requests in flight here (reported on /healthz)
        self._id_prefix = uuid.uuid4().hex[:16]
        self._id_counter = itertools.count(1)
        self._log_requests = LOGGER.isEnabledFor(logging.INFO)
        self._max_body_size = config.max_body_size
        self._timeout = config.timeout
        self._calls = bool(config.calls)  # pipelines: calls made while serving a request carry its context
        self._call: Callable[[Any, Any, Any], Any] = not_loaded  # predict, bound by bind()
        self._wants_query = True  # predict or post_predict takes query_params
        self._direct = False  # an async predict with nothing around it: awaited in _answer itself
        self._validate: Callable[[Any], Any] | None = None  # from predict's payload annotation
        self._tracer = tracing.start(config, replica_name())  # None unless stack.yaml turns tracing on
        self._dispatch = Dispatch(pool, metrics, self._tracer, count_gauges)  # how a payload reaches predict
        self._post = PostPredict(pool, self._tracer)
        self.affinity: AffinityTracker | None = None  # networking.affinity: what it serves of each value
        self.flights = Flights()  # the requests past admission: what a stuck replica answers (serving.health)
        self._timed = False  # predict is a plain async def: its run is timed in its Flight (stuck detection)

    def bind(self, predictor: LoadedPredictor) -> None:
        """The predictor is loaded: requests go to it from now on."""
        handler = predictor.predict
        self._call = handler.predict_caller()
        self._wants_query = handler.takes_all or "query_params" in handler.params or predictor.post_predict is not None
        self._direct = (
            handler.is_async and not handler.is_async_gen and self.config.batching is None and self._timeout is None
        )
        self._validate = payload_validator(predictor) if self.config.protocol == "default" else None
        self._timed = handler.is_async and not handler.is_async_gen
        self._dispatch.bind(handler, self._call, self.config.batching)
        self.predictor = predictor

    async def close(self) -> None:
        if self._leases is not None:
            await self._leases.close()
        await self._post.close()
        await self._dispatch.stop()
        if self._tracer is not None:
            self._tracer.shutdown()

    def queued(self) -> int:
        return self._pool.queued() + self._dispatch.waiting()

    def oldest_predict(self) -> float | None:
        """When the longest-running predict now running started (monotonic): on a thread or the event loop."""
        starts = [start for start in (self.flights.oldest_async(), self._pool.oldest_start()) if start is not None]
        return min(starts) if starts else None

    def holding(self) -> list[str] | None:
        """The named keys' leases of the requests this replica holds now; None when it takes no lease. The
        controller lets go of a lease no replica holds (one whose replica died with it)."""
        return list(self._holding) if self._leases is not None else None

    def authorized(self, request: web.Request) -> bool:
        """No keys configured, or `X-API-Key: KEY` / `Authorization: Bearer KEY` (scheme in any case) carries one."""
        keys = self.keys.current()
        return not keys or carries_key(request.headers, keys)

    def internal_key(self) -> str | None:
        """The key this replica's calls to other APIs of the stack carry now (None: the stack has no keys)."""
        keys = self.keys.current()
        return keys[0].decode() if keys else None

    def _new_request_id(self) -> str:
        # A per-process random prefix and a counter: unique across replicas, and
        # far cheaper than uuid4 on the hot path.
        return f"{self._id_prefix}{next(self._id_counter):08x}"

    async def handle_predict(self, request: web.Request, adapter: Any = None) -> web.StreamResponse:
        request_id = request.headers.get("X-Request-ID") or self._new_request_id()
        start = time.perf_counter()
        self.last_request_at = time.monotonic()
        if self._count_gauges:  # multiprocess mode: no callback gauges
            self.metrics.last_request.set(time.time())
        status = 500
        logged = REQUEST_ID.set(request_id)  # every line written while serving it carries its id
        tracer = self._tracer
        traced = tracer.start_request(request.method, request.path, request.headers, request_id) if tracer else None
        error: BaseException | None = None
        response: web.StreamResponse | None = None
        lease = request.headers.get(LEASE_HEADER, "") if self._leases is not None else ""
        if lease:
            self._holding[lease] = None
        try:
            response = await self._answer(request, request_id, adapter)
            status = response.status
            return response
        except StreamFailed as exc:
            error = exc.cause
            LOGGER.error(
                "stream failed after the response started", exc_info=exc.cause, extra={"request_id": request_id}
            )
            if request.transport is not None:
                request.transport.close()  # a chunked body without its last chunk reads as failed
            raise
        except ClientGone:
            status = CLIENT_GONE
            return web.Response(status=CLIENT_GONE)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self.flights.abandoned is None or task is None:
                raise  # the server is shutting down
            task.uncancel()
            response = error_response(504, _abandoned(self.flights.abandoned), request_id)
            status = response.status
            return response
        except Exception as exc:
            error = exc
            response = self._error(exc, request_id, adapter)
            status = response.status
            return response
        finally:
            if traced is not None and tracer is not None:
                tracer.finish_request(traced, status, error if status >= 500 else None)
            elapsed = time.perf_counter() - start
            named = request.get(KEY) if self.keys.keys else None  # a stack without keys: no lookup at all
            if isinstance(named, KeyEntry) and named.name:
                sent = response.content_length if response is not None and response.content_length else 0
                self.usage.record(named.name, status, elapsed, request.content_length or 0, sent)
            if self._leases is not None and lease:
                # Before the answer leaves: the client's next request finds its key's slot free.
                await self._leases.release(lease)
                self._holding.pop(lease, None)
            self.metrics.answered(status, elapsed)
            self._throughput.took(elapsed)
            if self._log_requests:
                LOGGER.info(
                    "request",
                    extra={
                        "method": request.method,
                        "path": request.path,
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 2),
                        "request_id": request_id,
                    },
                )
            REQUEST_ID.reset(logged)

    # -- prediction ----------------------------------------------------------

    async def _answer(self, request: web.Request, request_id: str, adapter: Any = None) -> web.StreamResponse:
        rank = 1
        if self.keys.current():
            entry = find_key(request.headers, self.keys.entries)
            if entry is None:
                return error_response(401, "missing or unknown API key", request_id, {"WWW-Authenticate": "Bearer"})
            caller = request.headers.get(CALLER_HEADER)
            if caller and "X-Forwarded-For" not in request.headers:  # a call of this stack's pipeline
                entry = next((e for e in self.keys.entries if e.name == caller), INTERNAL)
            request[KEY] = entry
            rank = RANK.get(entry.priority, 1)
            request[RANK_KEY] = rank
        if self.flights.abandoned is not None:
            message = f"this replica is stuck ({self.flights.abandoned}) and is being replaced; retry"
            return error_response(503, message, request_id, {"Retry-After": "1"})
        predictor = self.predictor
        if predictor is None:
            return error_response(503, "the predictor is still loading", request_id, {"Retry-After": "1"})
        # The body first, within body_timeout: a client trickling its body holds no slot of
        # max_concurrency meanwhile (a slow-body flood cannot turn everyone else away). A body
        # that arrived with its headers (most) is read without arming a timer.
        reading = (
            adapter.payload(request, self._max_body_size)
            if adapter is not None
            else read_payload(request, self._max_body_size)
        )
        if request.content.is_eof():
            payload = await reading
        else:
            try:
                async with asyncio.timeout(self.config.body_timeout):
                    payload = await reading
            except TimeoutError:
                # The rest of the body is not worth waiting for: answer, then close the connection.
                message = f"the request body did not arrive within {self.config.body_timeout:g}s"
                raise HTTPError(408, message, {"Connection": "close"}) from None
        if self.in_flight >= self.config.max_concurrency and not self._pool.evict(rank, self.retry_after()):
            return error_response(
                503,
                f"replica is at max_concurrency ({self.config.max_concurrency} requests); retry later",
                request_id,
                {"Retry-After": str(self.retry_after())},
            )
        timeout = self._timeout
        if TIMEOUT_HEADER in request.headers:  # a caller's deadline (serving.calls): never wait past it
            timeout = _caller_timeout(request.headers[TIMEOUT_HEADER], timeout)
        self.in_flight += 1
        if self._count_gauges:
            self.metrics.in_flight.inc()
        token = _enter(request, request_id, timeout) if self._calls else None
        tracked = self.affinity.begin(request) if self.affinity is not None else None
        task = asyncio.current_task()
        flight = Flight(request_id, request, time.monotonic() if self._timed else None)
        if task is not None:
            self.flights.add(task, flight)
        try:
            if self._validate is not None:
                payload = self._validate(payload)
            query = None
            if self._wants_query:
                query = QueryParams(request.query) if request.query_string else QueryParams(())
            if self._direct and timeout is None and (self._tracer is None or not self._tracer.sampled()):
                await asyncio.sleep(0)  # as in Dispatch.predict
                result = await self._call(payload, query, request.headers)
            else:
                work = self._dispatch.predict(request, payload, query, tracked)
                result = await (work if timeout is None else self._with_timeout(work, timeout))
            headers = {"X-Request-ID": request_id}
            flight.predicting, flight.responding = None, True
            response: web.StreamResponse
            if adapter is not None:
                response = await adapter.respond(request, payload, result, headers, self._pool.run)
            elif type(result) is not dict and is_stream(result):
                response = await stream(request, result, self._pool.run, headers)
            else:
                response = encode(result, headers) if type(result) is dict else await encode_any(result, headers)
                if self.config.monitoring is not None and response.status < 400:
                    self.metrics.record_prediction(self.config.monitoring, result)
            if predictor.post_predict is not None:
                await self._post.send_then_run(request, response, result, predictor.post_predict, payload, query)
            return response
        finally:
            if task is not None:
                self.flights.remove(task)
            if token is not None:
                CURRENT.reset(token)
            if tracked is not None and self.affinity is not None:
                self.affinity.end(tracked)
            self.in_flight -= 1
            if self._count_gauges:
                self.metrics.in_flight.dec()
            self._throughput.done()

    async def _with_timeout(self, work: Any, timeout: float) -> Any:
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                return await work
        except TimeoutError as exc:
            if deadline.expired():  # ours, not a TimeoutError the predictor raised
                raise PredictTimeout(timeout, caller=timeout != self._timeout) from exc
            raise

    # -- errors and back-pressure -------------------------------------------

    def _error(self, exc: Exception, request_id: str, adapter: Any = None) -> web.Response:
        failure = failure_of(exc)
        if failure.logged:
            LOGGER.error("predict failed", exc_info=exc, extra={"request_id": request_id})
        if adapter is None:
            return error_response(failure.status, failure.message, request_id, failure.headers)
        # The protocol's own error body (OpenAI's {"error": {...}}, v2's {"error": "..."}).
        return openai_error(failure, request_id) if self.config.protocol == "openai" else v2_error(failure, request_id)

    def retry_after(self) -> int:
        """Seconds until this replica likely has room: the backlog over recent throughput."""
        return self._throughput.retry_after(self.in_flight)


class Throughput:
    """Recent completions and the mean request duration: how soon a replica at its limit has room."""

    def __init__(self, threads: int) -> None:
        self._threads = threads
        self._completions: deque[float] = deque(maxlen=4096)
        self._mean_duration = 0.0
        self._started = time.monotonic()

    def took(self, seconds: float) -> None:
        self._mean_duration += (seconds - self._mean_duration) * 0.05

    def done(self) -> None:
        self._completions.append(time.monotonic())

    def retry_after(self, in_flight: int) -> int:
        now = time.monotonic()
        window = min(THROUGHPUT_WINDOW, now - self._started)
        done = sum(1 for t in self._completions if now - t <= window)
        if done and window > 0:
            seconds = in_flight / (done / window)
        elif self._mean_duration > 0:
            seconds = in_flight * self._mean_duration / self._threads
        else:
            seconds = 1.0  # nothing finished yet: no evidence for a longer wait
        return max(1, min(60, math.ceil(seconds)))


INTERNAL = KeyEntry(b"")  # a pipeline's call made for a client without a named key: counted nowhere


def _enter(request: web.Request, request_id: str, timeout: float | None) -> contextvars.Token[Any]:
    """The request the predictor's calls to other APIs belong to: its id, deadline, client and named key."""
    deadline = asyncio.get_running_loop().time() + timeout if timeout is not None else None

    def gone() -> bool:
        return request.transport is None or request.transport.is_closing()

    named = request.get(KEY)
    name = named.name if isinstance(named, KeyEntry) else ""
    return CURRENT.set(RequestContext(request_id, deadline, gone, name))


def _caller_timeout(given: str, own: float | None) -> float:
    """The sooner of a caller's `X-Request-Timeout` (seconds) and the API's own timeout."""
    try:
        seconds = float(given)
    except ValueError:
        raise HTTPError(400, f"{TIMEOUT_HEADER} must be a number of seconds, got {given[:40]!r}") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise HTTPError(400, f"{TIMEOUT_HEADER} must be a number of seconds, got {given[:40]!r}")
    return max(seconds, 0.001) if own is None else min(max(seconds, 0.001), own)


def _abandoned(reason: str) -> str:
    return f"this replica is stuck ({reason}); it is being replaced and your request was not answered: retry"
