"""Where a canary's numbers come from: the replicas' own counters, from Prometheus or the replicas.

A step is judged on the change of each series between two snapshots
(`Counters`): requests by status code and the latency histogram, per replica.
A series born between them counts from 0, one that went down (a restarted
replica) from 0 again: Prometheus' `increase()` misses both. A source with no
numbers answers `NoData` with the reason, never an empty or zero snapshot.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from stack.prometheus import query_vector


@dataclass(frozen=True)
class NoData:
    """A source's answer when it has no numbers: why (Prometheus down, a replica that does not answer)."""

    reason: str


@dataclass(frozen=True)
class Measurement:
    """The canary's metrics over one interval (Prometheus' view of the replicas' own counters)."""

    requests: float
    errors: float
    canary_p99: float | None
    baseline_p99: float | None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


REQUESTS = "predictor_requests_total"
BUCKETS = "predictor_request_duration_seconds_bucket"
GATEWAY_REQUESTS = "traefik_service_requests_total"


@dataclass(frozen=True)
class Counters:
    """Cumulative counters at one moment, per series: a step's numbers are the change between two."""

    requests: dict[tuple[str, str, str], float] = field(default_factory=dict)  # (api, instance, code)
    buckets: dict[tuple[str, str, float], float] = field(default_factory=dict)  # (api, instance, le)


def delta(start: dict[Any, float], end: dict[Any, float]) -> dict[Any, float]:
    """Per series: a series born since `start` counts from 0; one that went down (a restart) from 0 again."""
    result = {}
    for key, value in end.items():
        before = start.get(key, 0.0)
        result[key] = value - before if value >= before else value
    return result


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' histogram_quantile over cumulative bucket counts (upper bound -> count)."""
    bounds = sorted(buckets)
    if not bounds or bounds[-1] != math.inf:
        return None
    total = buckets[math.inf]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == math.inf:
                return lower  # the rank lies past the highest finite bucket: its upper bound
            return lower + (bound - lower) * ((rank - below) / (count - below) if count > below else 1.0)
        lower, below = bound, count
    return lower


def measure(start: Counters, end: Counters, canary: str, baseline: list[str]) -> Measurement:
    """The canary's requests, 5xx and p99, and the baseline's p99, between two snapshots."""
    requests = delta(start.requests, end.requests)
    total = sum(v for (api, _, _), v in requests.items() if api == canary)
    errors = sum(v for (api, _, code), v in requests.items() if api == canary and code.startswith("5"))
    buckets = delta(start.buckets, end.buckets)
    # p99, or with fewer than 100 requests the quantile that leaves out the slowest one: the p99
    # of 50 requests is their slowest, one scheduling hiccup.
    q = min(0.99, 1 - 1 / total) if total >= 2 else 0.99

    def latency(apis: set[str]) -> float | None:
        by_bound: dict[float, float] = {}
        for (api, _, bound), value in buckets.items():
            if api in apis:
                by_bound[bound] = by_bound.get(bound, 0.0) + value
        return quantile(q, by_bound)

    return Measurement(total, errors, latency({canary}), latency(set(baseline)))


class Source(Protocol):
    async def counters(self, apis: list[str]) -> Counters | NoData:
        """The replicas' request and latency counters for these APIs now; NoData when there are none."""
        ...

    async def gateway(self, services: list[str]) -> dict[str, float] | NoData:
        """Requests the gateway has sent to each of these services so far."""
        ...


class PrometheusSource:
    """Instant queries: Prometheus' newest scrape of every replica and of the gateway."""

    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = url.rstrip("/")
        self.session = session

    async def counters(self, apis: list[str]) -> Counters | NoData:
        selector = f'{{api=~"{"|".join(_regex(api) for api in apis)}"}}'
        try:
            requests = await self._query(REQUESTS + selector)
            buckets = await self._query(BUCKETS + selector)
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
            return NoData(f"Prometheus query failed: {exc}")
        return Counters(
            {(m.get("api", ""), m.get("instance", ""), m.get("code", "")): v for m, v in requests},
            {(m.get("api", ""), m.get("instance", ""), float(m.get("le", "nan"))): v for m, v in buckets},
        )

    async def gateway(self, services: list[str]) -> dict[str, float] | NoData:
        names = "|".join(_regex(s) for s in services)
        try:
            rows = await self._query(f'sum by (service) ({GATEWAY_REQUESTS}{{service=~"({names})@.+"}})')
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
            return NoData(f"Prometheus query failed: {exc}")
        return {m.get("service", "").split("@")[0]: v for m, v in rows}

    async def _query(self, query: str) -> list[tuple[dict[str, str], float]]:
        return await query_vector(self.session, self.url, query)


class ScrapeSource:
    """Without Prometheus (a local stack on a machine without it): read the replicas and Traefik directly."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        replicas: Callable[[str], list[str]],
        gateway_metrics: str | None = None,
    ) -> None:
        self.session = session
        self.replicas = replicas  # API -> its serving replicas' base URLs
        self.gateway_metrics = gateway_metrics

    async def counters(self, apis: list[str]) -> Counters | NoData:
        counters = Counters()
        for api in apis:
            for url in self.replicas(api):
                try:
                    text = await self._get(f"{url}/metrics")
                except (aiohttp.ClientError, TimeoutError) as exc:
                    return NoData(f"cannot scrape {url}: {exc}")
                for name, labels, value in _samples(text):
                    if labels.get("api") != api:
                        continue
                    if name == REQUESTS:
                        counters.requests[(api, url, labels.get("code", ""))] = value
                    elif name == BUCKETS:
                        counters.buckets[(api, url, float(labels.get("le", "nan")))] = value
        return counters

    async def gateway(self, services: list[str]) -> dict[str, float] | NoData:
        if self.gateway_metrics is None:
            return NoData("no gateway metrics")
        try:
            text = await self._get(self.gateway_metrics)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return NoData(f"cannot scrape the gateway: {exc}")
        totals: dict[str, float] = {}
        for name, labels, value in _samples(text):
            service = labels.get("service", "").split("@")[0]
            if name == GATEWAY_REQUESTS and service in services:
                totals[service] = totals.get(service, 0.0) + value
        return totals

    async def _get(self, url: str) -> str:
        async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as response:
            return await response.text()


def _samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    try:
        return [
            (sample.name, sample.labels, float(sample.value))
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        ]
    except ValueError:
        return []


def _regex(value: str) -> str:
    return "".join(f"\\\\{c}" if not c.isalnum() and c not in "_-" else c for c in value)
