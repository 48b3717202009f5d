"""The aiohttp application of one replica worker.

Routes: `POST /` predicts (the router strips the API prefix), `GET /` is a small
status document, `GET /healthz` says whether the replica is alive (200) or stuck or
unhealthy (503, with why: serving.health), with its readiness and the API keys it
applies beside, so the controller's one probe tells all three; `GET /readyz` is 200
only once the predictor is loaded, while alive and not draining; `GET /metrics` is
Prometheus exposition. Anything else is a JSON 404/405.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from aiohttp import web

from serving.affinity import AffinityTracker
from serving.calls import Apis, Upstreams
from serving.codec import error_response
from serving.config import ServingConfig
from serving.health import Health
from serving.loader import LoadedPredictor, load_predictor
from serving.metrics import CONTENT_TYPE, ApiMetrics
from serving.models import ModelsConfig, ModelStore, model_clients
from serving.openapi import openapi_document
from serving.pool import PredictPool
from serving.predict import Predictions
from serving.protocols import OpenAIAdapter, V2Adapter, openai_models, v2_routes

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

LOGGER = logging.getLogger("serving")
REPLICA_KEY: web.AppKey[Replica] = web.AppKey("replica")


class Replica:
    """State of one worker: the predictor, its thread pool, admission and draining."""

    def __init__(self, config: ServingConfig, ready_dir: Path | None = None, workers: int = 1) -> None:
        self.config = config
        self.metrics = ApiMetrics(config.api)
        self.predictor: LoadedPredictor | None = None
        self.models: ModelStore | None = None  # python_client / onnx_client models, when the API has any
        self._loaded_models: Callable[[], Iterable[object]] | None = None  # the predictor's own, if it has one
        self._loaded_failed = False
        self.apis: Apis | None = None  # the APIs of `calls` (serving.calls), made on the event loop
        self.draining = False
        self._started_wall = time.time()
        self._count_gauges = self.metrics.track_live(
            lambda: self.predictions.in_flight, lambda: self.predictions.queued(), self._last_request_time
        )
        # With batching, one thread per batch in flight (at least): the next batch is collected and
        # its inputs built while the previous one runs.
        threads = max(config.threads_per_process, config.batching.max_in_flight if config.batching else 0)
        self._pool = PredictPool(
            threads, on_start=self.metrics.queued.dec if self._count_gauges else None, ordered=config.priorities
        )
        self.predictions = Predictions(config, self.metrics, self._pool, self._count_gauges)
        if config.affinity is not None:
            kind, name = config.affinity
            self.predictions.affinity = AffinityTracker(
                (kind, name),
                loaded=self._loaded,
                registry=self.metrics.registry_for_extra(),
                api=config.api,
            )
        self.health = Health(config, self.predictions, workers)
        if config.gpus:
            self.metrics.watch_gpus()  # utilization and memory of its GPU(s), where NVML answers
        # With several worker processes, each marks itself ready with a file so
        # that any worker's /readyz can tell whether all of them are.
        self._ready_dir = ready_dir
        self._workers = workers

    # -- lifecycle -----------------------------------------------------------

    def construct(self) -> LoadedPredictor:
        """Import and construct the predictor (on a predictor thread, as Cortex does: with one thread,
        `__init__` and `predict` share it, which thread-affine libraries need)."""
        c = self.config
        clients: dict[str, Any] = {}
        if c.models is not None:
            root = Path(c.project_root) if c.project_root else Path(c.predictor_path).resolve().parent
            self.models = ModelStore(ModelsConfig.from_dict(c.models), root, self.metrics)
            clients = model_clients(c.predictor_type, self.models, gpu=c.gpus > 0)
        if self.apis is not None:
            clients["apis"] = self.apis
        return load_predictor(c.predictor_path, c.predictor_class, c.config, c.python_path, clients)

    def load(self) -> asyncio.Future[LoadedPredictor]:
        c = self.config
        if c.calls:
            loop = asyncio.get_running_loop()
            key = self.predictions.internal_key
            self.apis = Apis(c.api, c.calls, Upstreams(c.upstreams_file), loop, key, self.metrics.called)
            self.metrics.declare_calls(c.calls)
        return self._pool.run(self.construct, counted=False)

    def set_predictor(self, predictor: LoadedPredictor) -> None:
        self.predictor = predictor
        hook = getattr(predictor.instance, "loaded_models", None)
        self._loaded_models = hook if callable(hook) else None
        if self.models is not None:
            self.models.start_watching()
        self.predictions.bind(predictor)
        self.health.start(predictor)
        self.metrics.ready.set(1)
        if self._ready_dir:
            (self._ready_dir / f"ready-{os.getpid()}").touch()

    def _loaded(self) -> set[str] | None:
        """The affinity values this replica holds (serving.affinity): its model clients' models in memory, or
        what the predictor's own `loaded_models()` returns (a predictor with a cache of its own); None: the
        values it served recently stand for them."""
        if self.models is not None:
            return self.models.loaded_names()
        hook = self._loaded_models
        if hook is None:
            return None
        try:
            return {str(name) for name in hook()}
        except Exception as exc:
            if not self._loaded_failed:  # said once: it is asked on every request
                LOGGER.error(f"loaded_models() failed ({exc!r}); the values served recently stand for it")
                self._loaded_failed = True
            return None

    def start_draining(self) -> None:
        self.draining = True
        self.metrics.ready.set(0)
        if self._ready_dir:
            (self._ready_dir / f"ready-{os.getpid()}").unlink(missing_ok=True)

    async def close(self) -> None:
        await self.health.stop()
        await self.predictions.close()
        self._pool.shutdown()
        if self.models is not None:
            self.models.close()
        if self.apis is not None:
            await self.apis.close()

    def is_ready(self) -> bool:
        if self.predictor is None or self.draining or not self.health.alive or self.wedged():
            return False
        if self._ready_dir and self._workers > 1:
            return len(list(self._ready_dir.glob("ready-*"))) >= self._workers
        return True

    def wedged(self) -> bool:
        """Every predictor thread is busy with a call past its `timeout`: whatever arrives now can only time
        out, so the replica is not ready (requests go to others) until a thread is free — or, past
        `stuck_after`, it is stuck (serving.health)."""
        timeout = self.config.timeout
        if timeout is None or self.config.batching is not None:  # a batch's run is not one request's
            return False
        since = self._pool.saturated_since()
        return since is not None and time.monotonic() - since > timeout

    # -- routes --------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body_size)
        app[REPLICA_KEY] = self
        app.router.add_post("/", self.handle_predict)
        # Cortex's in-cluster route: through the gateway /API/predict reaches it too.
        app.router.add_post("/predict", self.handle_predict)
        self._protocol_routes(app)
        openapi = self.handle_openapi if self.config.public_openapi else self._keyed(self.handle_openapi)
        app.router.add_get("/openapi.json", openapi)
        app.router.add_get("/", self.handle_status)
        app.router.add_route("*", "/", _method_not_allowed)
        app.router.add_get("/healthz", self.handle_health)
        app.router.add_get("/readyz", self.handle_ready)
        app.router.add_get("/metrics", self.handle_metrics)
        app.router.add_route("*", "/{tail:.*}", _not_found)
        return app

    def _keyed(self, handler: Handler) -> Handler:
        """`handler` behind the API keys, as the prediction routes are (a 401 without one)."""

        async def keyed(request: web.Request) -> web.StreamResponse:
            if not self.predictions.authorized(request):
                return error_response(
                    401, "missing or unknown API key", _request_id(request), {"WWW-Authenticate": "Bearer"}
                )
            return await handler(request)

        return keyed

    async def handle_status(self, request: web.Request) -> web.Response:
        if not self.predictions.authorized(request):
            return error_response(
                401, "missing or unknown API key", _request_id(request), {"WWW-Authenticate": "Bearer"}
            )
        state = "draining" if self.draining else "ready" if self.predictor else "loading"
        return web.json_response(
            {
                "api": self.config.api,
                "status": state,
                "predictor": self.predictor.class_name if self.predictor else self.config.predictor_class or None,
                "in_flight": self.predictions.in_flight,
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
            app.router.add_get("/v1/models", self._keyed(openai_models(self.config.api, time.time())))
        elif protocol == "v2":
            v2 = V2Adapter(self.config.api)

            async def infer(request: web.Request) -> web.StreamResponse:
                return await self.handle_predict(request, v2)

            for method, path, handler in v2_routes(self.config.api, self.is_ready):
                # The health routes answer anyone, as the replica's own probes do; the metadata needs a key.
                app.router.add_route(method, path, handler if path.startswith("/v2/health/") else self._keyed(handler))
            app.router.add_post("/v2/models/{name}/infer", infer)
            app.router.add_post("/v2/models/{name}/versions/{version}/infer", infer)

    async def handle_openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi_document(self.config, self.predictor))

    async def handle_metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})

    async def handle_health(self, request: web.Request) -> web.Response:
        status, body = self.health.document()
        body["ready"] = self.is_ready()
        body["keys"] = self.predictions.keys.generation_now()
        if self.predictions.affinity is not None:
            body["affinity"] = self.predictions.affinity.report()
        holding = self.predictions.holding()
        if holding is not None:
            body["leases"] = holding
        return web.json_response(body, status=status)

    async def handle_ready(self, request: web.Request) -> web.Response:
        if self.is_ready():
            return web.json_response({"status": "ready"})
        if not self.health.alive:
            return web.json_response({"status": self.health.status, "reason": self.health.reason}, status=503)
        reason = "draining" if self.draining else "loading" if self.predictor is None else "workers starting"
        if self.predictor is not None and not self.draining and self.wedged():
            reason = "every predictor thread is busy past its timeout"
        return web.json_response({"status": reason}, status=503)

    def _last_request_time(self) -> float:
        """Unix time of the newest request, or of the start: how long this replica has been idle."""
        if not self.predictions.last_request_at:
            return self._started_wall
        return time.time() - (time.monotonic() - self.predictions.last_request_at)

    # -- the predict path's numbers (serving.predict) ------------------------------

    @property
    def in_flight(self) -> int:
        return self.predictions.in_flight

    @property
    def last_request_at(self) -> float:
        return self.predictions.last_request_at

    def retry_after(self) -> int:
        return self.predictions.retry_after()

    async def handle_predict(self, request: web.Request, adapter: Any = None) -> web.StreamResponse:
        return await self.predictions.handle_predict(request, adapter)


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
