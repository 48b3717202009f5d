"""Where the autoscaler's input comes from: Prometheus, or the replicas themselves.

Both answer the same question for one API: total requests in flight
(executing + queued) averaged over a window, and over the short panic window.
Missing data is None with a reason, never zero: an empty result, NaN, an
unreachable server or a stale series must hold the count, not shrink it.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from stack.prometheus import query_vector

IN_FLIGHT = "predictor_requests_in_flight"
LAST_REQUEST = "predictor_last_request_timestamp_seconds"
GPU_UTILIZATION = "predictor_gpu_utilization_ratio"


@dataclass(frozen=True)
class Signal:
    in_flight: float | None
    in_flight_short: float | None
    missing_reason: str = ""
    idle_for: float | None = None  # seconds since the API's newest request (or its replicas' start)
    gpu_utilization: float | None = None  # the API's GPUs, 0..1, averaged over the window (None: no GPU data)


class PrometheusSignal:
    """Reads Prometheus' HTTP API. Values arrive as strings and may be NaN."""

    def __init__(self, url: str, session: aiohttp.ClientSession, scrape_interval: float) -> None:
        self.url = url.rstrip("/")
        self.session = session
        # A series whose newest sample is older than two scrapes is not being scraped: Prometheus
        # would carry its last value for 5 minutes (across its own restart, for one), so it counts for nothing.
        self.stale_after = max(2 * scrape_interval, 2.0)
        self.scrape_interval = scrape_interval

    async def read(self, api: str, window: float, short_window: float) -> Signal:
        selector = f'{IN_FLIGHT}{{api="{api}"}}'
        try:
            newest = await self._query(f"max(timestamp({selector}))")
            if newest is None:
                return Signal(None, None, "Prometheus has no in-flight series for this API yet")
            if time.time() - newest > self.stale_after:
                return Signal(None, None, f"in-flight series is stale ({time.time() - newest:.0f}s old)")
            gap = await self._gap(selector, window)
            if gap is not None:
                return Signal(None, None, f"Prometheus has no data for {gap:.0f}s inside the window (was it down?)")
            long = await self._query(self._average_of_total(selector, window))
            # A range shorter than two scrapes may hold no sample at all.
            short_range = max(short_window, 2 * self.scrape_interval)
            short = await self._query(self._average_of_total(selector, short_range))
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            return Signal(None, None, f"Prometheus query failed: {exc}")
        if long is None:
            return Signal(None, None, "Prometheus returned an empty or NaN result")
        try:
            idle = await self._query(f'time() - max({LAST_REQUEST}{{api="{api}"}})')
            gpu = await self._query(f'avg(avg_over_time({GPU_UTILIZATION}{{api="{api}"}}[{_seconds(window)}]))')
        except (aiohttp.ClientError, TimeoutError, ValueError):
            idle = gpu = None
        return Signal(long, short, idle_for=idle, gpu_utilization=gpu)

    def _fresh(self, selector: str) -> str:
        """Only samples scraped within two intervals of each instant: no value carried across a gap."""
        return f"({selector} and (time() - timestamp({selector})) <= {self.stale_after:g})"

    def _average_of_total(self, selector: str, window: float) -> str:
        # The average of the sum, not the sum of per-replica averages: a replica that
        # joined mid-window would otherwise add its average on top of the load it took
        # over (8 requests in flight read as 10.4 while replicas were being added).
        step = _seconds(self.scrape_interval)
        return f"avg_over_time(sum({self._fresh(selector)})[{_seconds(window)}:{step}])"

    async def _gap(self, selector: str, window: float) -> float | None:
        """Seconds missing between the window's first and last fresh sample, if more than two scrapes."""
        total = f"sum({self._fresh(selector)})"
        step = _seconds(self.scrape_interval)
        span = f"[{_seconds(window)}:{step}]"
        first = await self._query(f"min_over_time(timestamp({total}){span})")
        steps = await self._query(f"count_over_time({total}{span})")
        if first is None or steps is None:
            return None
        step_s = max(round(self.scrape_interval), 1)
        missing = (time.time() - first) - steps * step_s
        return missing if missing > 2 * step_s + self.stale_after else None

    async def _query(self, query: str) -> float | None:
        rows = await query_vector(self.session, self.url, query)
        return rows[0][1] if rows else None


class ScrapeSignal:
    """Scrapes each replica's /metrics and averages the totals itself (no Prometheus needed)."""

    def __init__(self, session: aiohttp.ClientSession, keep: float) -> None:
        self.session = session
        self.keep = keep
        self.samples: dict[str, deque[tuple[float, float]]] = {}
        self.last_request: dict[str, float] = {}  # api -> unix time of its newest request

    async def sample(self, api: str, replica_urls: list[str]) -> str | None:
        """Add one sample of the API's total; returns a reason when it could not."""
        total = 0.0
        newest: float | None = None
        for url in replica_urls:
            try:
                async with self.session.get(f"{url}/metrics", timeout=aiohttp.ClientTimeout(total=2)) as response:
                    text = await response.text()
            except (aiohttp.ClientError, TimeoutError) as exc:
                return f"cannot scrape {url}: {exc}"
            value = _in_flight(text, api)
            if value is None:
                return f"{url} exports no {IN_FLIGHT} for API {api}"
            total += value
            last = _in_flight(text, api, LAST_REQUEST)
            if last is not None:
                newest = last if newest is None else max(newest, last)
        if newest is not None:
            self.last_request[api] = newest
        now = time.monotonic()
        series = self.samples.setdefault(api, deque())
        series.append((now, total))
        while series and series[0][0] < now - self.keep:
            series.popleft()
        return None

    def read(self, api: str, window: float, short_window: float) -> Signal:
        series = self.samples.get(api)
        if not series:
            return Signal(None, None, "no samples yet")
        now = time.monotonic()
        long = [v for t, v in series if t >= now - window]
        short = [v for t, v in series if t >= now - short_window] or long[-1:]
        if not long:
            return Signal(None, None, "no recent samples")
        last = self.last_request.get(api)
        idle = None if last is None else max(time.time() - last, 0.0)
        return Signal(sum(long) / len(long), sum(short) / len(short), idle_for=idle)


def _in_flight(exposition: str, api: str, name: str = IN_FLIGHT) -> float | None:
    """The API's gauge `name` from a replica's exposition (prometheus_client's own parser)."""
    try:
        for family in text_string_to_metric_families(exposition):
            if family.name != name:
                continue
            for sample in family.samples:
                if sample.name == name and sample.labels.get("api") == api:
                    return float(sample.value)
    except ValueError:
        return None
    return None


def _seconds(value: float) -> str:
    return f"{max(round(value), 1)}s"
