"""Prometheus metrics of one replica, labelled by API.

Each `Replica` owns an `ApiMetrics` with its own `CollectorRegistry`, so
several replicas can live in one process (tests run the app in-process) and
nothing is registered at import time. With several worker processes,
prometheus-client's multiprocess mode sums them: `PROMETHEUS_MULTIPROC_DIR`
must be set before `prometheus_client` is first imported, which
`serving.__main__` does; gauges use `livesum` so a dead worker's last values
do not linger.

`predictor_requests_in_flight` (executing + queued) is the autoscaler's signal.
"""

from __future__ import annotations

import os
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from serving.gpu import GpuMetrics

# `_created` series double every counter's cardinality and nothing here reads them.
disable_created_metrics()  # type: ignore[no-untyped-call,unused-ignore]

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

# Latency buckets reach 2 minutes: model inference, and batches of it, run long.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


REQUESTS_HELP = "Prediction requests answered, by HTTP status code."
DURATION_HELP = "Time from receiving a prediction request to the end of its response."


class _Answered:
    """Requests answered (by status code) and their latency histogram, as plain numbers.

    Only the event loop's thread updates them (no lock) and the registry reads them at scrape
    time, on the same thread. prometheus_client's Counter and Histogram take a lock per update:
    measured, that cost a fast replica 5-9% of its requests per second.
    """

    def __init__(self, api: str) -> None:
        self.api = api
        self.by_code: dict[int, int] = {}
        self.buckets = [0] * (len(DURATION_BUCKETS) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0

    def record(self, code: int, seconds: float) -> None:
        by_code = self.by_code
        by_code[code] = by_code.get(code, 0) + 1
        self.buckets[bisect_left(DURATION_BUCKETS, seconds)] += 1  # `le` is inclusive, as bisect_left
        self.sum += seconds

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("predictor_requests", REQUESTS_HELP, labels=["api", "code"])
        for code, count in sorted(self.by_code.items()):
            requests.add_metric([self.api, str(code)], count)
        yield requests
        cumulative, total = [], 0
        for bound, count in zip([*map(floatToGoString, DURATION_BUCKETS), "+Inf"], self.buckets, strict=True):
            total += count
            cumulative.append((bound, total))
        duration = HistogramMetricFamily("predictor_request_duration_seconds", DURATION_HELP, labels=["api"])
        duration.add_metric([self.api], cumulative, sum_value=self.sum)
        yield duration


class ApiMetrics:
    """The metrics of one API, bound to their label once so the hot path skips label lookups."""

    def registry_for_extra(self) -> CollectorRegistry | None:
        """Where another module's metrics of this replica go (None in multiprocess mode: the files)."""
        return None if MULTIPROCESS else self.registry

    def __init__(self, api: str, registry: CollectorRegistry | None = None) -> None:
        self.api = api
        self.registry = registry if registry is not None else CollectorRegistry()
        # In multiprocess mode values live in per-process files that the collector reads;
        # the metric objects then belong to no registry.
        into = None if MULTIPROCESS else self.registry
        self._answered: _Answered | None = None
        if MULTIPROCESS:
            self._requests = Counter("predictor_requests", REQUESTS_HELP, ["api", "code"], registry=None)
            self._duration = Histogram(
                "predictor_request_duration_seconds", DURATION_HELP, ["api"], buckets=DURATION_BUCKETS, registry=None
            ).labels(api)
        else:
            self._answered = _Answered(api)
            self.registry.register(self._answered)  # type: ignore[arg-type,unused-ignore]
        self.in_flight = Gauge(
            "predictor_requests_in_flight",
            "Prediction requests executing or queued in this replica.",
            ["api"],
            multiprocess_mode="livesum",
            registry=into,
        ).labels(api)
        self.queued = Gauge(
            "predictor_queue_length",
            "Prediction requests waiting for a predictor thread or a batch.",
            ["api"],
            multiprocess_mode="livesum",
            registry=into,
        ).labels(api)
        self.batch_size = Histogram(
            "predictor_batch_size",
            "Requests per batch given to predict.",
            ["api"],
            buckets=BATCH_BUCKETS,
            registry=into,
        ).labels(api)
        # How long the API has been idle (scale to zero): the newest request's time, or the start.
        self.last_request = Gauge(
            "predictor_last_request_timestamp_seconds",
            "Unix time of the last prediction request this replica received (its start time before the first).",
            ["api"],
            multiprocess_mode="max",
            registry=into,
        ).labels(api)
        self.ready = Gauge(
            "predictor_ready",
            "1 when every worker process of the replica has loaded its predictor and is not draining.",
            ["api"],
            multiprocess_mode="livemin",
            registry=into,
        ).labels(api)
        # Models (python_client / onnx_client): in memory, load time, cache outcomes.
        self.models_loaded = Gauge(
            "predictor_models_loaded", "Model versions in memory.", ["api"], multiprocess_mode="livesum", registry=into
        ).labels(api)
        self.model_load_duration = Histogram(
            "predictor_model_load_duration_seconds",
            "Time to download and load one model version.",
            ["api"],
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=into,
        ).labels(api)
        self.model_cache = Counter(
            "predictor_model_cache",
            "get_model calls answered from memory (hit), loading (miss), and models unloaded (eviction).",
            ["api", "result"],
            registry=into,
        )
        # Cortex's model monitoring: predicted classes counted, or predicted values' distribution.
        self.predicted_class = Counter(
            "predictor_predicted_class",
            "Predictions by class (monitoring.model_type: classification).",
            ["api", "class"],
            registry=into,
        )
        self.predicted_value = Histogram(
            "predictor_predicted_value",
            "Predicted values (monitoring.model_type: regression).",
            ["api"],
            buckets=(-1000, -100, -10, -1, -0.1, 0, 0.1, 0.25, 0.5, 0.75, 1, 10, 100, 1000),
            registry=into,
        ).labels(api)
        # Pipelines (serving.calls): each call to another API of the stack, per callee (an edge of the graph).
        self.calls = Counter(
            "predictor_calls",
            "Calls to other APIs of the stack, by callee and the callee's status code (error: none came).",
            ["api", "callee", "code"],
            registry=into,
        )
        self.call_duration = Histogram(
            "predictor_call_duration_seconds",
            "Time from sending a call to another API to its answer (for a stream, its headers).",
            ["api", "callee"],
            buckets=DURATION_BUCKETS,
            registry=into,
        )
        self._by_code: dict[int, Counter] = {}
        self._gpus: GpuMetrics | None = None

    def watch_gpus(self, metrics: GpuMetrics | None = None) -> bool:
        """Export the replica's GPUs (NVML) at every scrape; False when NVML sees none."""
        gpus = metrics or GpuMetrics(self.api)
        if not gpus.available:
            return False
        self._gpus = gpus
        if not MULTIPROCESS:
            self.registry.register(gpus)  # type: ignore[arg-type,unused-ignore]
        return True

    def track_live(
        self, in_flight: Callable[[], float], queued: Callable[[], float], last_request: Callable[[], float]
    ) -> bool:
        """Read in-flight and queued counts and the last request's time at scrape time when there is one process.

        Returns True when the caller must keep the gauges itself (inc/dec, set):
        multiprocess mode has no callback gauges, so each worker writes its own.
        """
        if MULTIPROCESS:
            self.last_request.set(time.time())
            return True
        self.in_flight.set_function(in_flight)
        self.queued.set_function(queued)
        self.last_request.set_function(last_request)
        return False

    def record_prediction(self, monitoring: dict[str, str], result: Any) -> None:
        """Monitoring: the prediction in `result` (its `key` field, or the whole result)."""
        key = monitoring.get("key")
        value = result.get(key) if key and isinstance(result, dict) else result
        if value is None or isinstance(value, (dict, list)):
            return
        if monitoring.get("model_type") == "classification":
            self.predicted_class.labels(self.api, str(value)[:64]).inc()
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            self.predicted_value.observe(float(value))

    def declare_calls(self, callees: list[str]) -> None:
        """Each edge's series at zero from the start, so the first calls show up as a rate: Prometheus
        counts no increase for a series whose first sample already holds them."""
        for callee in callees:
            self.calls.labels(self.api, callee, "200")
            self.call_duration.labels(self.api, callee)

    def called(self, callee: str, code: str, seconds: float) -> None:
        """One call to the API `callee` ended with `code` after `seconds`."""
        self.calls.labels(self.api, callee, code).inc()
        self.call_duration.labels(self.api, callee).observe(seconds)

    def answered(self, code: int, seconds: float) -> None:
        """One prediction request answered with `code` after `seconds` (on the event loop's thread)."""
        if self._answered is not None:
            self._answered.record(code, seconds)
            return
        child = self._by_code.get(code)
        if child is None:
            child = self._by_code[code] = self._requests.labels(self.api, str(code))
        child.inc()
        self._duration.observe(seconds)

    def exposition(self) -> bytes:
        if MULTIPROCESS:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call,unused-ignore]
            if self._gpus is not None:  # read live by the worker that answers the scrape
                registry.register(self._gpus)  # type: ignore[arg-type,unused-ignore]
            return generate_latest(registry)
        return generate_latest(self.registry)


# CONTENT_TYPE_LATEST carries a charset, which web.Response(content_type=) refuses: set it as a header.
CONTENT_TYPE = CONTENT_TYPE_LATEST


def mark_process_dead(pid: int) -> None:
    if MULTIPROCESS:
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call,unused-ignore]
