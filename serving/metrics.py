"""Prometheus metrics of one replica, labelled by API.

With several worker processes, prometheus-client's multiprocess mode sums them:
`PROMETHEUS_MULTIPROC_DIR` must be set before `prometheus_client` is first
imported, which `serving.__main__` does. Gauges use `livesum` so a dead
worker's last values do not linger.

`predictor_requests_in_flight` (executing + queued) is the autoscaler's signal.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)

# `_created` series double every counter's cardinality and nothing here reads them.
disable_created_metrics()

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

# Latency buckets reach 2 minutes: model inference, and batches of it, run long.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

REQUESTS = Counter("predictor_requests", "Prediction requests answered, by HTTP status code.", ["api", "code"])
DURATION = Histogram(
    "predictor_request_duration_seconds",
    "Time from receiving a prediction request to the end of its response.",
    ["api"],
    buckets=DURATION_BUCKETS,
)
IN_FLIGHT = Gauge(
    "predictor_requests_in_flight",
    "Prediction requests executing or queued in this replica.",
    ["api"],
    multiprocess_mode="livesum",
)
QUEUED = Gauge(
    "predictor_queue_length",
    "Prediction requests waiting for a predictor thread or a batch.",
    ["api"],
    multiprocess_mode="livesum",
)
BATCH_SIZE = Histogram("predictor_batch_size", "Requests per batch given to predict.", ["api"], buckets=BATCH_BUCKETS)
READY = Gauge(
    "predictor_ready",
    "1 when every worker process of the replica has loaded its predictor and is not draining.",
    ["api"],
    multiprocess_mode="livemin",
)


class ApiMetrics:
    """The metric children of one API, bound once so the hot path skips label lookups."""

    def __init__(self, api: str) -> None:
        self.api = api
        self.duration = DURATION.labels(api)
        self.in_flight = IN_FLIGHT.labels(api)
        self.queued = QUEUED.labels(api)
        self.batch_size = BATCH_SIZE.labels(api)
        self.ready = READY.labels(api)
        self._by_code: dict[int, Counter] = {}

    def track_live(self, in_flight: Callable[[], float], queued: Callable[[], float]) -> bool:
        """Read in-flight and queued counts at scrape time when there is one process.

        Returns True when the caller must keep the gauges itself with inc/dec:
        multiprocess mode has no callback gauges, so each worker writes its own.
        """
        if MULTIPROCESS:
            return True
        self.in_flight.set_function(in_flight)
        self.queued.set_function(queued)
        return False

    def count(self, code: int) -> None:
        child = self._by_code.get(code)
        if child is None:
            child = self._by_code[code] = REQUESTS.labels(self.api, str(code))
        child.inc()


def exposition() -> bytes:
    if MULTIPROCESS:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(REGISTRY)


async def metrics_handler(request: web.Request) -> web.Response:
    # CONTENT_TYPE_LATEST carries a charset, which web.Response(content_type=) refuses.
    return web.Response(body=exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def mark_process_dead(pid: int) -> None:
    if MULTIPROCESS:
        multiprocess.mark_process_dead(pid)
