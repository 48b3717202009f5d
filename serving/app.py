"""The aiohttp application of one replica worker.

Routes: `POST /` predicts (the router strips the API prefix), `GET /` is a small
status document, `GET /healthz` says the process is alive, `GET /readyz` is 200
only once the predictor is loaded and while not draining, `GET /metrics` is
Prometheus exposition. Anything else is a JSON 404/405.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import itertools
import json
import logging
import math
import os
import time
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from serving.batching import Batcher, BatchMismatch
from serving.codec import QueryParams, encode, encode_any, error_response, read_payload
from serving.config import ServingConfig
from serving.errors import HTTPError
from serving.loader import LoadedPredictor, load_predictor
from serving.metrics import CONTENT_TYPE, ApiMetrics
from serving.models import ModelsConfig, ModelStore, ONNXClient, PythonClient
from serving.openapi import openapi_document, payload_validator
from serving.pool import ClientGone, PredictPool
from serving.protocols import OpenAIAdapter, OpenAIError, V2Adapter, openai_error, openai_models, v2_error, v2_routes
from serving.streaming import StreamFailed, is_stream, stream

LOGGER = logging.getLogger("serving")
REPLICA_KEY: web.AppKey[Replica] = web.AppKey("replica")
CLIENT_GONE = 499  # nginx's code for "client closed the request"; only ever logged and counted
THROUGHPUT_WINDOW = 10.0  # seconds of completions that Retry-After is computed from


class PredictTimeout(Exception):
    """The request passed its `timeout` before predict answered."""


class Replica:
    """State of one worker: the predictor, its thread pool, admission and draining."""

    def __init__(self, config: ServingConfig, ready_dir: Path | None = None, workers: int = 1) -> None:
        self.config = config
        self.metrics = ApiMetrics(config.api)
        self.predictor: LoadedPredictor | None = None
        self.models: ModelStore | None = None  # python_client / onnx_client models, when the API has any
        self.draining = False
        self.in_flight = 0
        self.last_request_at = 0.0  # monotonic; draining waits until requests stop arriving
        self._started_wall = time.time()
        self._count_gauges = self.metrics.track_live(lambda: self.in_flight, self._queued, self._last_request_time)
        # With batching, one thread per batch in flight (at least): the next batch is collected and
        # its inputs built while the previous one runs.
        threads = max(config.threads_per_process, config.batching.max_in_flight if config.batching else 0)
        self._pool = PredictPool(threads, on_start=self.metrics.queued.dec if self._count_gauges else None)
        self._batcher: Batcher | None = None
        self._completions: deque[float] = deque(maxlen=4096)
        self._mean_duration = 0.0
        self._started = time.monotonic()
        self._background: set[asyncio.Task[Any]] = set()
        # With several worker processes, each marks itself ready with a file so
        # that any worker's /readyz can tell whether all of them are.
        self._ready_dir = ready_dir
        self._workers = workers
        self._api_keys = [key.encode() for key in config.read_api_keys()]
        self._id_prefix = uuid.uuid4().hex[:16]
        self._id_counter = itertools.count(1)
        self._log_requests = LOGGER.isEnabledFor(logging.INFO)
        self._max_body_size = config.max_body_size
        self._timeout = config.timeout
        self._call: Callable[[Any, Any, Any], Any] = _not_loaded  # predict, bound by set_predictor
        self._wants_query = True  # predict or post_predict takes query_params
        self._direct = False  # an async predict with nothing around it: awaited in _answer itself
        self._validate: Callable[[Any], Any] | None = None  # from predict's payload annotation

    # -- lifecycle -----------------------------------------------------------

    def construct(self) -> LoadedPredictor:
        """Import and construct the predictor (on a predictor thread, as Cortex does: with one thread,
        `__init__` and `predict` share it, which thread-affine libraries need)."""
        c = self.config
        clients: dict[str, Any] = {}
        if c.models is not None:
            root = Path(c.project_root) if c.project_root else Path(c.predictor_path).resolve().parent
            self.models = ModelStore(ModelsConfig.from_dict(c.models), root, self.metrics)
            if c.predictor_type == "onnx":
                clients["onnx_client"] = ONNXClient(self.models, gpu=c.gpus > 0)
            else:
                clients["python_client"] = PythonClient(self.models)
        return load_predictor(c.predictor_path, c.predictor_class, c.config, c.python_path, clients)

    def load(self) -> asyncio.Future[LoadedPredictor]:
        return self._pool.run(self.construct, counted=False)

    def set_predictor(self, predictor: LoadedPredictor) -> None:
        self.predictor = predictor
        if self.models is not None:
            self.models.start_watching()
        handler = predictor.predict
        self._call = handler.predict_caller()
        self._wants_query = handler.takes_all or "query_params" in handler.params or predictor.post_predict is not None
        self._direct = (
            handler.is_async and not handler.is_async_gen and self.config.batching is None and self._timeout is None
        )
        self._validate = payload_validator(predictor) if self.config.protocol == "default" else None
        batching = self.config.batching
        if batching is not None:
            self._batcher = Batcher(
                self._run_batch,
                batching.max_batch_size,
                batching.batch_interval,
                max(batching.max_in_flight, 1),
                self.metrics,
                count_queued=self._count_gauges,
                eager=batching.eager,
            )
            self._batcher.start()
        self.metrics.ready.set(1)
        if self._ready_dir:
            (self._ready_dir / f"ready-{os.getpid()}").touch()

    def start_draining(self) -> None:
        self.draining = True
        self.metrics.ready.set(0)
        if self._ready_dir:
            (self._ready_dir / f"ready-{os.getpid()}").unlink(missing_ok=True)

    async def close(self) -> None:
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self._batcher:
            await self._batcher.stop()
        self._pool.shutdown()
        if self.models is not None:
            self.models.close()

    def _queued(self) -> int:
        return self._pool.queued() + (self._batcher.waiting() if self._batcher else 0)

    def is_ready(self) -> bool:
        if self.predictor is None or self.draining:
            return False
        if self._ready_dir and self._workers > 1:
            return len(list(self._ready_dir.glob("ready-*"))) >= self._workers
        return True

    # -- routes --------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body_size)
        app[REPLICA_KEY] = self
        app.router.add_post("/", self.handle_predict)
        # Cortex's in-cluster route: through the gateway /API/predict reaches it too.
        app.router.add_post("/predict", self.handle_predict)
        self._protocol_routes(app)
        app.router.add_get("/openapi.json", self.handle_openapi)
        app.router.add_get("/", self.handle_status)
        app.router.add_route("*", "/", _method_not_allowed)
        app.router.add_get("/healthz", self.handle_health)
        app.router.add_get("/readyz", self.handle_ready)
        app.router.add_get("/metrics", self.handle_metrics)
        app.router.add_route("*", "/{tail:.*}", _not_found)
        return app

    async def handle_status(self, request: web.Request) -> web.Response:
        if self._api_keys and not self._authorized(request):
            return error_response(
                401, "missing or unknown API key", _request_id(request), {"WWW-Authenticate": "Bearer"}
            )
        state = "draining" if self.draining else "ready" if self.predictor else "loading"
        return web.json_response(
            {
                "api": self.config.api,
                "status": state,
                "predictor": self.predictor.class_name if self.predictor else self.config.predictor_class or None,
                "in_flight": self.in_flight,
                "max_concurrency": self.config.max_concurrency,
                "batching": self.config.batching is not None,
                "pid": os.getpid(),
                **({"models": self.models.describe()} if self.models is not None else {}),
            }
        )

    def _protocol_routes(self, app: web.Application) -> None:
        protocol = self.config.protocol
        if protocol == "openai":
            chat, completion = OpenAIAdapter(self.config.api, chat=True), OpenAIAdapter(self.config.api, chat=False)

            async def chat_route(request: web.Request) -> web.StreamResponse:
                return await self.handle_predict(request, chat)

            async def completion_route(request: web.Request) -> web.StreamResponse:
                return await self.handle_predict(request, completion)

            app.router.add_post("/v1/chat/completions", chat_route)
            app.router.add_post("/v1/completions", completion_route)
            app.router.add_get("/v1/models", openai_models(self.config.api, time.time()))
        elif protocol == "v2":
            v2 = V2Adapter(self.config.api)

            async def infer(request: web.Request) -> web.StreamResponse:
                return await self.handle_predict(request, v2)

            for method, path, handler in v2_routes(self.config.api, self.is_ready):
                app.router.add_route(method, path, handler)
            app.router.add_post("/v2/models/{name}/infer", infer)
            app.router.add_post("/v2/models/{name}/versions/{version}/infer", infer)

    async def handle_openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi_document(self.config, self.predictor))

    async def handle_metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})

    async def handle_health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def handle_ready(self, request: web.Request) -> web.Response:
        if self.is_ready():
            return web.json_response({"status": "ready"})
        reason = "draining" if self.draining else "loading" if self.predictor is None else "workers starting"
        return web.json_response({"status": reason}, status=503)

    def _new_request_id(self) -> str:
        # A per-process random prefix and a counter: unique across replicas, and
        # far cheaper than uuid4 on the hot path.
        return f"{self._id_prefix}{next(self._id_counter):08x}"

    def _last_request_time(self) -> float:
        """Unix time of the newest request, or of the start: how long this replica has been idle."""
        if not self.last_request_at:
            return self._started_wall
        return time.time() - (time.monotonic() - self.last_request_at)

    async def handle_predict(self, request: web.Request, adapter: Any = None) -> web.StreamResponse:
        request_id = request.headers.get("X-Request-ID") or self._new_request_id()
        start = time.perf_counter()
        self.last_request_at = time.monotonic()
        if self._count_gauges:  # multiprocess mode: no callback gauges
            self.metrics.last_request.set(time.time())
        status = 500
        try:
            response = await self._answer(request, request_id, adapter)
            status = response.status
            return response
        except StreamFailed as exc:
            LOGGER.error(
                "stream failed after the response started", exc_info=exc.cause, extra={"request_id": request_id}
            )
            if request.transport is not None:
                request.transport.close()  # a chunked body without its last chunk reads as failed
            raise
        except ClientGone:
            status = CLIENT_GONE
            return web.Response(status=CLIENT_GONE)
        except Exception as exc:
            response = self._error(exc, request_id)
            if adapter is not None and response.status >= 400:
                response = self._reshape_error(exc, response, request_id)
            status = response.status
            return response
        finally:
            elapsed = time.perf_counter() - start
            self.metrics.answered(status, elapsed)
            self._mean_duration += (elapsed - self._mean_duration) * 0.05
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

    # -- prediction ----------------------------------------------------------

    def _reshape_error(self, exc: Exception, response: web.Response, request_id: str) -> web.Response:
        """The protocol's own error body (OpenAI's {"error": {...}}, v2's {"error": "..."})."""
        message = exc.message if isinstance(exc, HTTPError) else json.loads(response.text or "{}").get("error", "")
        error = HTTPError(
            response.status,
            str(message),
            {"Retry-After": response.headers["Retry-After"]} if "Retry-After" in response.headers else None,
        )
        if isinstance(exc, OpenAIError):
            error = exc
        return openai_error(error, request_id) if self.config.protocol == "openai" else v2_error(error, request_id)

    async def _answer(self, request: web.Request, request_id: str, adapter: Any = None) -> web.StreamResponse:
        if self._api_keys and not self._authorized(request):
            return error_response(401, "missing or unknown API key", request_id, {"WWW-Authenticate": "Bearer"})
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
        if self.in_flight >= self.config.max_concurrency:
            return error_response(
                503,
                f"replica is at max_concurrency ({self.config.max_concurrency} requests); retry later",
                request_id,
                {"Retry-After": str(self.retry_after())},
            )
        self.in_flight += 1
        if self._count_gauges:
            self.metrics.in_flight.inc()
        try:
            if self._validate is not None:
                payload = self._validate(payload)
            query = None
            if self._wants_query:
                query = QueryParams(request.query) if request.query_string else QueryParams(())
            if self._direct:
                await asyncio.sleep(0)  # as in _predict
                result = await self._call(payload, query, request.headers)
            else:
                work = self._predict(request, predictor, payload, query)
                result = await (work if self._timeout is None else self._with_timeout(work))
            headers = {"X-Request-ID": request_id}
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
                await self._send_then_post_predict(request, response, result, predictor, payload, query)
            return response
        finally:
            self.in_flight -= 1
            if self._count_gauges:
                self.metrics.in_flight.dec()
            self._completions.append(time.monotonic())

    def _authorized(self, request: web.Request) -> bool:
        """`X-API-Key: KEY` or `Authorization: Bearer KEY` (scheme in any case); either may carry the key."""
        candidates = []
        if "X-API-Key" in request.headers:
            candidates.append(request.headers["X-API-Key"].strip())
        scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
        if scheme.lower() == "bearer":
            candidates.append(token.strip())
        for given in candidates:
            try:
                raw = given.encode()
            except UnicodeError:  # bytes no key can hold: not a match, never a 500
                continue
            # Compare with every key in constant time, so timing reveals nothing about them.
            if any(hmac.compare_digest(raw, key) for key in self._api_keys):
                return True
        return False

    async def _with_timeout(self, work: Any) -> Any:
        deadline = asyncio.timeout(self.config.timeout)
        try:
            async with deadline:
                return await work
        except TimeoutError as exc:
            if deadline.expired():  # ours, not a TimeoutError the predictor raised
                raise PredictTimeout() from exc
            raise

    async def _predict(
        self, request: web.Request, predictor: LoadedPredictor, payload: Any, query: dict[str, str] | None
    ) -> Any:
        handler = predictor.predict
        call = self._call
        if self._batcher is None:
            if handler.is_async_gen:
                return call(payload, query, request.headers)
            if handler.is_async:
                # One turn of the loop before an async predict: the loop then takes the requests of
                # every ready connection before it answers any. Measured (bench/runtime.py, W0 both at
                # once), CPU per request falls by about a tenth; a lone request waits one turn (µs).
                await asyncio.sleep(0)
                return await call(payload, query, request.headers)

        def is_gone() -> bool:
            return request.transport is None or request.transport.is_closing()

        if self._batcher is not None:
            return await self._batcher.submit((payload, query, request.headers), is_gone)
        # Waiting in the pool's queue is "queued"; the worker counts it down when it starts.
        if self._count_gauges:
            self.metrics.queued.inc()
        return await self._pool.run(functools.partial(call, payload, query, request.headers), is_gone)

    async def _run_batch(self, items: list[tuple[Any, dict[str, str], Any]]) -> Any:
        assert self.predictor is not None
        handler = self.predictor.predict
        call = functools.partial(
            handler.call,
            payload=[item[0] for item in items],
            query_params=[item[1] for item in items],
            headers=[item[2] for item in items],
        )
        if handler.is_async:
            return await call()
        return await self._pool.run(call)

    async def _send_then_post_predict(
        self,
        request: web.Request,
        response: web.StreamResponse,
        result: Any,
        predictor: LoadedPredictor,
        payload: Any,
        query: dict[str, str] | None,
    ) -> None:
        if not response.prepared:
            await response.prepare(request)
            await response.write_eof()
        assert predictor.post_predict is not None
        handler = predictor.post_predict
        # As in Cortex, `response` is what predict returned; the HTTP status is `status_code`.
        call = functools.partial(
            handler.call,
            response=result,
            status_code=response.status,
            payload=payload,
            query_params=query,
            headers=request.headers,
        )
        task = asyncio.get_running_loop().create_task(self._post_predict(call, handler.is_async))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _post_predict(self, call: Callable[[], Any], is_async: bool) -> None:
        try:
            if is_async:
                await call()
            else:
                await self._pool.run(call)
        except Exception:
            LOGGER.exception("post_predict failed")

    # -- errors and back-pressure -------------------------------------------

    def _error(self, exc: Exception, request_id: str) -> web.Response:
        if isinstance(exc, HTTPError):
            return error_response(exc.status, exc.message, request_id, exc.headers)
        if isinstance(exc, web.HTTPException):
            return error_response(exc.status, exc.text or exc.reason, request_id)
        if isinstance(exc, PredictTimeout):
            return error_response(
                504, f"prediction took longer than the timeout of {self.config.timeout:g}s", request_id
            )
        LOGGER.error("predict failed", exc_info=exc, extra={"request_id": request_id})
        if isinstance(exc, BatchMismatch):
            return error_response(500, str(exc), request_id)
        message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return error_response(500, message, request_id)

    def retry_after(self) -> int:
        """Seconds until this replica likely has room: the backlog over recent throughput."""
        now = time.monotonic()
        window = min(THROUGHPUT_WINDOW, now - self._started)
        done = sum(1 for t in self._completions if now - t <= window)
        if done and window > 0:
            seconds = self.in_flight / (done / window)
        elif self._mean_duration > 0:
            seconds = self.in_flight * self._mean_duration / self.config.threads_per_process
        else:
            seconds = 1.0  # nothing finished yet: no evidence for a longer wait
        return max(1, min(60, math.ceil(seconds)))


def _not_loaded(payload: Any, query: Any, headers: Any) -> Any:
    raise RuntimeError("predict called before the predictor was loaded")


async def _not_found(request: web.Request) -> web.Response:
    return error_response(
        404, f"no route for {request.method} {request.path}; predictions are POST /", _request_id(request)
    )


async def _method_not_allowed(request: web.Request) -> web.Response:
    response = error_response(405, f"{request.method} / is not allowed; use POST / to predict", _request_id(request))
    response.headers["Allow"] = "GET, POST"
    return response


def _request_id(request: web.Request) -> str:
    return request.headers.get("X-Request-ID") or uuid.uuid4().hex
