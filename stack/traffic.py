"""An API's traffic as `stack status` shows it, from Prometheus' HTTP API.

Rates and latency quantiles come from `rate()` over the last minute. Counts
come from the counters themselves — each series' newest value, for every
replica seen in the last `COUNT_WINDOW` — so they are exact integers: the
first requests after `stack up` show up as soon as they are scraped (an
`increase()` needs two samples, and extrapolates: 112 after 100 requests).
"""

from __future__ import annotations

import math

import requests

from stack import prometheus
from stack.plan.gpus import Placement
from stack.spec import Spec
from stack.status import CallStatus, GpuStatus, Traffic

COUNT_WINDOW = "1h"


def prometheus_traffic(prometheus_url: str, api: str, timeout: float = 3.0) -> Traffic:
    url = prometheus_url
    selector = f'api="{api}"'
    by_le = f"sum by (le) (rate(predictor_request_duration_seconds_bucket{{{selector}}}[1m]))"
    try:
        rate = _scalar(url, f"sum(rate(predictor_requests_total{{{selector}}}[1m]))", timeout)
        p50 = _scalar(url, f"1000 * histogram_quantile(0.5, {by_le})", timeout)
        p99 = _scalar(url, f"1000 * histogram_quantile(0.99, {by_le})", timeout)
        counts = {"2xx": 0, "4xx": 0, "5xx": 0}
        query = f"sum by (code) (last_over_time(predictor_requests_total{{{selector}}}[{COUNT_WINDOW}]))"
        for labels, value in prometheus.query(url, query, timeout):
            key = f"{labels.get('code', '0')[:1]}xx"
            if key in counts:
                counts[key] += round(value)
    except (requests.RequestException, KeyError, ValueError, TypeError):
        return Traffic(error="Prometheus not reachable")
    return Traffic(_rounded(rate), _rounded(p50), _rounded(p99), counts)


def _scalar(url: str, query: str, timeout: float) -> float | None:
    rows = prometheus.query(url, query, timeout)
    return rows[0][1] if rows else None


def _rounded(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else round(value, 2)


def gpu_status(placement: Placement, prometheus_url: str | None, timeout: float = 3.0) -> list[GpuStatus]:
    """The GPUs the slots are placed on, with their use now (where Prometheus has the replicas' NVML metrics)."""
    if not placement.slots:
        return []
    usage: dict[str, dict[str, float]] = {}
    if prometheus_url:
        try:
            for name in ("predictor_gpu_utilization_ratio", "predictor_gpu_memory_used_bytes"):
                for labels, value in prometheus.query(prometheus_url, f"max by (gpu) ({name})", timeout):
                    usage.setdefault(labels.get("gpu", ""), {})[name] = value
        except (requests.RequestException, ValueError):
            usage = {}
    result = []
    for gpu in placement.gpus:
        slots = placement.on(gpu.index)
        seen = usage.get(gpu.uuid or str(gpu.index), {})
        used = seen.get("predictor_gpu_memory_used_bytes")
        result.append(
            GpuStatus(
                gpu.index,
                gpu.uuid,
                gpu.name,
                gpu.memory,
                [s.name for s in slots],
                round(float(sum(s.share for s in slots)), 4),
                seen.get("predictor_gpu_utilization_ratio"),
                None if used is None else int(used),
            )
        )
    return result


def replica_gpu_memory(prometheus_url: str, api: str, timeout: float = 3.0) -> dict[str, int]:
    """Each replica's own GPU memory, by its `replica` label and by `instance` (host:port)."""
    query = f'sum by (instance, replica) (predictor_gpu_process_memory_bytes{{api="{api}"}})'
    try:
        rows = prometheus.query(prometheus_url, query, timeout)
    except (requests.RequestException, ValueError):
        return {}
    found: dict[str, int] = {}
    for labels, value in rows:
        for key in (labels.get("replica"), labels.get("instance")):
            if key:
                found[key] = int(value)
    return found


def call_graph(spec: Spec, prometheus_url: str | None, timeout: float = 3.0) -> list[CallStatus]:
    """Each edge of the pipelines' call graph (apis[].calls) with its rate, errors and p99 from the
    callers' `predictor_calls_total` and `predictor_call_duration_seconds`."""
    edges = [(api.name, callee) for api in spec.apis for callee in api.calls]
    if not edges:
        return []
    if not prometheus_url:
        return [CallStatus(a, b, error="no Prometheus") for a, b in edges]
    errors = 'code!~"2.."'
    by_le = "sum by (api, callee, le) (rate(predictor_call_duration_seconds_bucket[1m]))"
    try:
        rates = _by_edge(prometheus_url, "sum by (api, callee) (rate(predictor_calls_total[1m]))", timeout)
        failing = _by_edge(
            prometheus_url, f"sum by (api, callee) (rate(predictor_calls_total{{{errors}}}[1m]))", timeout
        )
        window = f"[{COUNT_WINDOW}]"
        totals = _by_edge(
            prometheus_url, f"sum by (api, callee) (last_over_time(predictor_calls_total{window}))", timeout
        )
        failed = _by_edge(
            prometheus_url, f"sum by (api, callee) (last_over_time(predictor_calls_total{{{errors}}}{window}))", timeout
        )
        p99 = _by_edge(prometheus_url, f"1000 * histogram_quantile(0.99, {by_le})", timeout)
    except (requests.RequestException, KeyError, ValueError, TypeError):
        return [CallStatus(a, b, error="Prometheus not reachable") for a, b in edges]
    return [
        CallStatus(
            a,
            b,
            _rounded(rates.get((a, b), 0.0 if (a, b) in totals else None)),
            _rounded(failing.get((a, b), 0.0 if (a, b) in totals else None)),
            round(totals[(a, b)]) if (a, b) in totals else None,
            round(failed.get((a, b), 0.0)) if (a, b) in totals else None,
            _rounded(p99.get((a, b))),
        )
        for a, b in edges
    ]


def _by_edge(url: str, query: str, timeout: float) -> dict[tuple[str, str], float]:
    return {
        (labels.get("api", ""), labels.get("callee", "")): value
        for labels, value in prometheus.query(url, query, timeout)
    }
