"""The dashboard's data: one JSON document, read by the page every few seconds.

The numbers "now" come from the functions `stack status` uses (stack.traffic,
stack.control.canary.status_of, the target's scaler), so the page and `stack status
--json` agree; the charts are Prometheus `query_range` over one of `RANGES`
(the last 15 minutes unless the page asks for another). Only these fixed
queries run: the page cannot send PromQL of its own.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import aiohttp
import requests

from stack.control.autoscale.config import AutoscalerConfig
from stack.control.autoscale.scaler import Replicas
from stack.status import AffinityStatus, AutoscalerStatus, SplitterStatus
from stack.traffic import prometheus_traffic
from stack.usage import usage as key_usage

REFRESH = 2.0  # seconds between two reads of the page
Points = list[list[float]]  # [[unix time, value], ...]


@dataclass(frozen=True)
class Range:
    """How much history the charts show: `window` seconds, a point every `step` (about 180-290 points)."""

    name: str
    window: float
    step: float

    @property
    def rate(self) -> str:
        # A rate over at least a minute and two steps: each point covers its whole step, no spike falls
        # between two points (what Grafana's $__rate_interval does).
        return f"{max(60, 2 * self.step):g}s"


RANGES = {
    r.name: r for r in (Range("15m", 900, 5), Range("1h", 3600, 15), Range("6h", 21600, 75), Range("24h", 86400, 300))
}
DEFAULT_RANGE = RANGES["15m"]


def chart_range(name: str | None) -> Range:
    """The range the page asked for (`?range=1h`); an unknown name is a ValueError naming the choices."""
    if not name:
        return DEFAULT_RANGE
    found = RANGES.get(name)
    if found is None:
        raise ValueError(f"no chart range {name[:20]!r}: choose one of {', '.join(RANGES)}")
    return found


class Source(Protocol):
    """What the controller knows that Prometheus does not (stack.control.runtime.ControlPlane)."""

    config: AutoscalerConfig

    def status(self) -> dict[str, AutoscalerStatus]:
        """The autoscaler's last decision and its recent changes, per API."""
        ...

    async def replicas(self, api: str) -> Replicas | None:
        """Ready and asked-for replicas now, from the target (None when it cannot say)."""
        ...

    def splitters(self) -> list[SplitterStatus]:
        """The splitters as the gateway runs them, their canaries' progress (blocking I/O is fine)."""
        ...

    def events(self, api: str) -> list[str]:
        """The API's recent events: replicas replaced and why, restarts, rollouts (blocking I/O is fine)."""
        ...

    def affinity(self) -> dict[str, AffinityStatus]:
        """The affinity APIs' values, where they go and the hit ratio (networking.affinity)."""
        ...


@dataclass(frozen=True)
class Chart:
    key: str  # the series' name in the document
    query: str  # PromQL with {api} for the API's label value


CHARTS = [
    Chart("requests_per_second", 'sum(rate(predictor_requests_total{{api="{api}"}}[{rate}]))'),
    Chart("p50_ms", "1000 * histogram_quantile(0.5, {by_le})"),
    Chart("p99_ms", "1000 * histogram_quantile(0.99, {by_le})"),
    Chart("errors_per_second", 'sum(rate(predictor_requests_total{{api="{api}",code=~"5.."}}[{rate}])) or {zero}'),
    Chart("in_flight", 'sum(predictor_requests_in_flight{{api="{api}"}}) or {zero}'),
    Chart("replicas", 'sum(predictor_ready{{api="{api}"}}) or {zero}'),
]
BY_LE = 'sum by (le) (rate(predictor_request_duration_seconds_bucket{{api="{api}"}}[{rate}]))'
GPU_CHARTS = {
    "utilization": "max by (gpu) (predictor_gpu_utilization_ratio)",
    "memory_used_bytes": "max by (gpu) (predictor_gpu_memory_used_bytes)",
}


def _query(chart: Chart, api: str, over: Range = DEFAULT_RANGE) -> str:
    # A count with no series is a zero (no replica, no error), not a gap, but only while Prometheus
    # was scraping: before the stack existed it is a gap (`vector(0)` would draw zeros there).
    by_le = BY_LE.format(api=api, rate=over.rate)
    return chart.query.format(api=api, by_le=by_le, zero="0 * max(up)", rate=over.rate)


async def query_range(
    session: aiohttp.ClientSession, url: str, query: str, start: float, end: float, step: float
) -> list[tuple[dict[str, str], Points]]:
    """Prometheus' range query: each series' labels and its [time, value] points (NaN points left out)."""
    params = {"query": query, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
    async with session.get(
        f"{url.rstrip('/')}/api/v1/query_range", params=params, timeout=aiohttp.ClientTimeout(total=5)
    ) as response:
        body = await response.json(content_type=None)
    if not isinstance(body, dict) or body.get("status") != "success":
        raise ValueError(body.get("error", "query failed") if isinstance(body, dict) else "not a Prometheus answer")
    result = []
    for row in body["data"]["result"]:
        points = [[float(t), float(v)] for t, v in row["values"] if not math.isnan(float(v))]
        result.append((row["metric"], [[t, round(v, 4)] for t, v in points]))
    return result


class Dashboard:
    """Builds the document from the controller's `Source` and Prometheus at `prometheus_url`."""

    def __init__(
        self,
        source: Source,
        session: aiohttp.ClientSession,
        prometheus_url: Callable[[], str | None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.source = source
        self.session = session
        self.prometheus_url = prometheus_url
        self.clock = clock

    async def document(self, over: Range = DEFAULT_RANGE) -> dict[str, Any]:
        config = self.source.config
        now = self.clock()
        problems: list[str] = []
        decisions = self.source.status()
        names = [a.name for a in config.routed]
        apis = await asyncio.gather(*(self._api(name, now, over, decisions.get(name), problems) for name in names))
        try:
            splitters = [asdict(s) for s in await asyncio.to_thread(self.source.splitters)]
        except Exception as exc:  # a state file being rewritten: say so, keep the rest
            splitters = []
            problems.append(f"splitters unreadable: {exc}")
        gpus = await self._gpus(now, over, problems)
        usage = await self._usage(over, problems)
        return {
            "project": config.project,
            "now": now,
            "range": over.name,
            "ranges": list(RANGES),
            "window_s": over.window,
            "step_s": over.step,
            "refresh_s": REFRESH,
            "apis": apis,
            "splitters": splitters,
            "gpus": gpus,
            "usage": usage,
            "problems": sorted(set(problems)),
        }

    async def _usage(self, over: Range, problems: list[str]) -> list[dict[str, Any]]:
        """Each named key's use of each API over the page's range (stack.usage, as `stack usage` shows it)."""
        url = self.prometheus_url()
        if not url:
            return []
        try:
            rows = await asyncio.to_thread(key_usage, url, over.window)
        except (requests.RequestException, ValueError) as exc:
            problems.append(f"usage unreadable: {exc}")
            return []
        return [row.to_dict() for row in rows]

    async def _api(
        self, name: str, now: float, over: Range, decisions: AutoscalerStatus | None, problems: list[str]
    ) -> dict[str, Any]:
        routed = next(a for a in self.source.config.routed if a.name == name)
        scaling = next((a for a in self.source.config.apis if a.name == name), None)
        replicas = await self.source.replicas(name)
        api: dict[str, Any] = {
            "name": name,
            "endpoint": routed.endpoint,
            "ready": None if replicas is None else replicas.ready,
            "desired": None if replicas is None else replicas.current,
            "autoscaled": scaling is not None,
            "min_replicas": scaling.bounds.min_replicas if scaling else None,
            "max_replicas": scaling.bounds.max_replicas if scaling else None,
            "autoscaler": None if decisions is None else asdict(decisions),
            "events": (await asyncio.to_thread(self.source.events, name))[-8:],
            "affinity": None if (shown := self.source.affinity().get(name)) is None else asdict(shown),
            "series": {},
        }
        url = self.prometheus_url()
        if not url:
            problems.append("no Prometheus: no traffic numbers or charts")
            return api
        traffic = await asyncio.to_thread(prometheus_traffic, url, name)
        if traffic.error:
            problems.append(traffic.error)
        api.update(
            requests_per_second=traffic.requests_per_second,
            p50_ms=traffic.p50_ms,
            p99_ms=traffic.p99_ms,
            **traffic.counts,
        )
        series = await asyncio.gather(
            *(self._range(url, _query(chart, name, over), now, over) for chart in CHARTS), return_exceptions=True
        )
        for chart, found in zip(CHARTS, series, strict=True):
            if isinstance(found, BaseException):
                problems.append(f"Prometheus query_range failed: {found}")
                api["series"][chart.key] = []
            else:
                api["series"][chart.key] = found[0][1] if found else []
        in_flight = api["series"]["in_flight"]
        api["in_flight"] = in_flight[-1][1] if in_flight and in_flight[-1][0] >= now - 2 * over.step else None
        return api

    async def _range(self, url: str, query: str, now: float, over: Range) -> list[tuple[dict[str, str], Points]]:
        # Aligned to the step: the same points from one refresh to the next, the charts do not shimmer.
        end = math.floor(now / over.step) * over.step
        return await query_range(self.session, url, query, end - over.window, end, over.step)

    async def _gpus(self, now: float, over: Range, problems: list[str]) -> list[dict[str, Any]]:
        url = self.prometheus_url()
        if not url:
            return []
        gpus: dict[str, dict[str, Any]] = {}
        for key, query in GPU_CHARTS.items():
            try:
                found = await self._range(url, query, now, over)
            except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
                problems.append(f"Prometheus query_range failed: {exc}")
                continue
            for labels, points in found:
                gpu = labels.get("gpu", "")
                gpus.setdefault(gpu, {"gpu": gpu})[key] = points
        return [gpus[g] for g in sorted(gpus)]


Document = Callable[[Range], Awaitable[dict[str, Any]]]
