"""Automated canaries: a splitter's canary API gets more traffic step by step, or none.

A splitter with `canary:` starts its canary at the first step when `stack up`
deploys a new version of the canary API (or a new `canary:` block). At the end
of each step's interval the canary's own metrics over that interval decide:

- fewer than `min_requests` requests (or no data at all): hold, the step starts over
  (and no step runs while the canary's new version is still replacing the old one);
- 5xx share above `max_error_rate`, or p99 above `max_latency_ratio` x the
  baseline's: roll back (the canary's weight drops to 0) and stop;
- otherwise advance to the next step; reaching the last step promotes it.

The other APIs of the splitter are the baseline; they share what the canary
does not get in proportion to their weights in stack.yaml. `stack split` on a
splitter stops its canary (weights set by hand win) until the next `stack up`.

The numbers are the change of the replicas' own counters (requests by status
code, the latency histogram) between the step's first and last snapshot, from
Prometheus or, without it, from the replicas themselves. The runner lives in
whatever already runs beside the gateway (the local supervisor, the Compose
controller, Nomad's autoscaler job); it keeps its state in `canary.json` (on
Nomad a variable), which `stack status` reads, with each API's observed share
of its splitters, and exports its decisions as Prometheus metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.parser import text_string_to_metric_families

from stack.atomic import write_json_atomic
from stack.autoscale.signal import query_vector
from stack.spec.units import format_duration

if TYPE_CHECKING:
    from stack.splits import SplitterConfig

LOGGER = logging.getLogger("stack.canary")
STATE_FILE = "canary.json"
KEPT_DECISIONS = 20
OBSERVED_WINDOW = 60.0  # `stack status` shows each API's share of a splitter's requests over the last minute
OBSERVE_EVERY = 5.0
TICK = 1.0

PROGRESSING, PROMOTED, ROLLED_BACK, STOPPED = "progressing", "promoted", "rolled back", "stopped"
PHASES = (PROGRESSING, PROMOTED, ROLLED_BACK, STOPPED)


@dataclass(frozen=True)
class CanaryConfig:
    """A splitter's `canary:` block as plain data (the Compose controller gets it as JSON)."""

    api: str
    steps: tuple[int, ...] = (5, 25, 50, 100)
    interval: float = 60.0
    max_error_rate: float = 0.01
    max_latency_ratio: float | None = 1.5
    latency_floor: float = 0.05
    min_requests: int = 50
    revision: str = ""  # the canary API's version and this block: a new one starts a new canary

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CanaryConfig:
        return cls(**{**data, "steps": tuple(int(s) for s in data["steps"])})


def canary_of(block: Any, version: str) -> CanaryConfig:
    """The spec's canary block (stack.spec.models.Canary) for a canary API at `version`."""
    settings = block.model_dump()
    revision = hashlib.sha256(f"{json.dumps(settings, sort_keys=True)}\0{version}".encode()).hexdigest()[:12]
    return CanaryConfig(**{**settings, "steps": tuple(settings["steps"]), "revision": revision})


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


@dataclass
class Decision:
    """One judgement, with its numbers, as `stack status` shows it."""

    at: float  # unix time
    action: str  # start | advance | hold | rollback | promote | stop
    weight: int  # the canary's percent of the splitter after this decision
    reason: str
    requests: float | None = None
    error_rate: float | None = None
    latency_ratio: float | None = None
    count: int = 1  # the same hold, repeated


@dataclass
class CanaryState:
    splitter: str
    api: str
    revision: str
    phase: str
    step: int  # index into the steps
    step_started: float  # unix time
    decisions: list[Decision] = field(default_factory=list)

    def weight(self, config: CanaryConfig) -> int:
        if self.phase == ROLLED_BACK:
            return 0
        return config.steps[min(self.step, len(config.steps) - 1)]

    def record(self, decision: Decision) -> None:
        last = self.decisions[-1] if self.decisions else None
        if (
            last is not None
            and decision.action == "hold"
            and last.action == "hold"
            and last.weight == decision.weight
            and re.sub(r"[\d.]+", "#", last.reason) == re.sub(r"[\d.]+", "#", decision.reason)
        ):
            decision.count = last.count + 1
            self.decisions[-1] = decision
        else:
            self.decisions = [*self.decisions[-(KEPT_DECISIONS - 1) :], decision]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CanaryState:
        values = dict(data)
        values["decisions"] = [Decision(**d) for d in data.get("decisions", [])]
        state = cls(**values)
        if state.phase not in PHASES or not isinstance(state.step, int):
            raise ValueError(f"unknown canary phase {state.phase!r}")
        return state


def start(splitter: str, config: CanaryConfig, now: float, why: str = "") -> CanaryState:
    state = CanaryState(splitter, config.api, config.revision, PROGRESSING, 0, now)
    reason = why or f"new version of {config.api}: {config.steps[0]}% for {format_duration(config.interval)}"
    if len(config.steps) == 1:  # one step is a plain switch: there is no further step to earn
        state.phase = PROMOTED
        reason = f"{config.api} gets {config.steps[0]}% at once (one step)"
    state.record(Decision(now, "start", config.steps[0], reason))
    return state


def due(config: CanaryConfig, state: CanaryState, now: float) -> bool:
    return state.phase == PROGRESSING and now - state.step_started >= config.interval


def judge(config: CanaryConfig, state: CanaryState, measured: Measurement | str, now: float) -> Decision:
    """Decide the step whose interval just ended, and move `state` on (a pure function of its inputs)."""
    weight = state.weight(config)
    if isinstance(measured, str):
        state.step_started = now
        decision = Decision(now, "hold", weight, f"hold: no data ({measured}); the step starts over")
        state.record(decision)
        return decision
    requests, rate = round(measured.requests, 1), round(measured.error_rate, 5)
    if measured.requests < config.min_requests:
        state.step_started = now
        decision = Decision(
            now,
            "hold",
            weight,
            f"hold: {measured.requests:.0f} requests < min_requests {config.min_requests}; the step starts over",
            requests=requests,
            error_rate=rate,
        )
        state.record(decision)
        return decision
    ratio = _latency_ratio(config, measured)
    if measured.error_rate > config.max_error_rate:
        state.phase = ROLLED_BACK
        reason = (
            f"rollback: error rate {_percent(measured.error_rate)} > max_error_rate {_percent(config.max_error_rate)} "
            f"({measured.errors:.0f} of {measured.requests:.0f} requests at {weight}%)"
        )
        decision = Decision(now, "rollback", 0, reason, latency_ratio=ratio, requests=requests, error_rate=rate)
    elif config.max_latency_ratio is not None and ratio is None:
        state.step_started = now
        decision = Decision(
            now,
            "hold",
            weight,
            "hold: no p99 latency for the canary or its baseline",
            requests=requests,
            error_rate=rate,
        )
    elif config.max_latency_ratio is not None and ratio is not None and ratio > config.max_latency_ratio:
        state.phase = ROLLED_BACK
        reason = (
            f"rollback: p99 {_ms(measured.canary_p99)} is {ratio:.2f}x the baseline's {_ms(measured.baseline_p99)} "
            f"> max_latency_ratio {config.max_latency_ratio:g} (at {weight}%)"
        )
        decision = Decision(now, "rollback", 0, reason, latency_ratio=ratio, requests=requests, error_rate=rate)
    else:
        state.step += 1
        state.step_started = now
        within = f"error rate {_percent(measured.error_rate)} over {measured.requests:.0f} requests" + (
            f", p99 ratio {ratio:.2f}" if ratio is not None else ""
        )
        if state.step >= len(config.steps) - 1:
            state.step = len(config.steps) - 1
            state.phase = PROMOTED
            decision = Decision(
                now,
                "promote",
                state.weight(config),
                f"promoted to {state.weight(config)}%: {within}",
                latency_ratio=ratio,
                requests=requests,
                error_rate=rate,
            )
        else:
            decision = Decision(
                now,
                "advance",
                state.weight(config),
                f"advance {weight}% -> {state.weight(config)}%: {within}",
                latency_ratio=ratio,
                requests=requests,
                error_rate=rate,
            )
    state.record(decision)
    return decision


def _latency_ratio(config: CanaryConfig, measured: Measurement) -> float | None:
    if measured.canary_p99 is None or measured.baseline_p99 is None:
        return None
    floor = config.latency_floor
    return round(max(measured.canary_p99, floor) / max(measured.baseline_p99, floor), 3)


def weights_at(members: list[tuple[str, int]], canary: str, percent: int) -> dict[str, int]:
    """The splitter's weights with `percent` for the canary; the baseline shares the rest as in stack.yaml."""
    others = [(api, weight) for api, weight in members if api != canary]
    total = sum(weight for _, weight in others)
    shares = [(api, weight if total else 1) for api, weight in others]
    total = sum(weight for _, weight in shares)
    rest = 100 - percent
    exact = [(api, rest * weight / total) for api, weight in shares]
    result = {api: math.floor(value) for api, value in exact}
    # Largest remainder: the baseline's whole numbers add up to exactly 100 - percent.
    for api, _ in sorted(exact, key=lambda item: item[1] - math.floor(item[1]), reverse=True)[
        : rest - sum(result.values())
    ]:
        result[api] += 1
    return {api: percent if api == canary else result[api] for api, _ in members}


# -- where the numbers come from --------------------------------------------------------------------

REQUESTS = "predictor_requests_total"
BUCKETS = "predictor_request_duration_seconds_bucket"
GATEWAY_REQUESTS = "traefik_service_requests_total"


@dataclass(frozen=True)
class Counters:
    """Cumulative counters at one moment, per series: a step's numbers are the change between two."""

    requests: dict[tuple[str, str, str], float] = field(default_factory=dict)  # (api, instance, code)
    buckets: dict[tuple[str, str, float], float] = field(default_factory=dict)  # (api, instance, le)


def _delta(start: dict[Any, float], end: dict[Any, float]) -> dict[Any, float]:
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
    requests = _delta(start.requests, end.requests)
    total = sum(v for (api, _, _), v in requests.items() if api == canary)
    errors = sum(v for (api, _, code), v in requests.items() if api == canary and code.startswith("5"))
    buckets = _delta(start.buckets, end.buckets)
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
    async def counters(self, apis: list[str]) -> Counters | str:
        """The replicas' request and latency counters for these APIs now; a reason when there are none."""
        ...

    async def gateway(self, services: list[str]) -> dict[str, float] | str:
        """Requests the gateway has sent to each of these services so far."""
        ...


class PrometheusSource:
    """Instant queries: Prometheus' newest scrape of every replica and of the gateway."""

    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = url.rstrip("/")
        self.session = session

    async def counters(self, apis: list[str]) -> Counters | str:
        selector = f'{{api=~"{"|".join(_regex(api) for api in apis)}"}}'
        try:
            requests = await self._query(REQUESTS + selector)
            buckets = await self._query(BUCKETS + selector)
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
            return f"Prometheus query failed: {exc}"
        return Counters(
            {(m.get("api", ""), m.get("instance", ""), m.get("code", "")): v for m, v in requests},
            {(m.get("api", ""), m.get("instance", ""), float(m.get("le", "nan"))): v for m, v in buckets},
        )

    async def gateway(self, services: list[str]) -> dict[str, float] | str:
        names = "|".join(_regex(s) for s in services)
        try:
            rows = await self._query(f'sum by (service) ({GATEWAY_REQUESTS}{{service=~"({names})@.+"}})')
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
            return f"Prometheus query failed: {exc}"
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

    async def counters(self, apis: list[str]) -> Counters | str:
        counters = Counters()
        for api in apis:
            for url in self.replicas(api):
                try:
                    text = await self._get(f"{url}/metrics")
                except (aiohttp.ClientError, TimeoutError) as exc:
                    return f"cannot scrape {url}: {exc}"
                for name, labels, value in _samples(text):
                    if labels.get("api") != api:
                        continue
                    if name == REQUESTS:
                        counters.requests[(api, url, labels.get("code", ""))] = value
                    elif name == BUCKETS:
                        counters.buckets[(api, url, float(labels.get("le", "nan")))] = value
        return counters

    async def gateway(self, services: list[str]) -> dict[str, float] | str:
        if self.gateway_metrics is None:
            return "no gateway metrics"
        try:
            text = await self._get(self.gateway_metrics)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"cannot scrape the gateway: {exc}"
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


# -- the runner ---------------------------------------------------------------------------------------


class Metrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.weight = Gauge(
            "stack_canary_weight_percent",
            "The canary API's percent of its splitter's requests, as the gateway applies it.",
            ["splitter", "api"],
            registry=registry,
        )
        self.phase = Gauge(
            "stack_canary_phase",
            "1 for the canary's current phase (progressing, promoted, rolled back, stopped), else 0.",
            ["splitter", "api", "phase"],
            registry=registry,
        )
        self.decisions = Counter(
            "stack_canary_decisions",
            "Canary decisions, by action (start, advance, hold, rollback, promote, stop).",
            ["splitter", "api", "action"],
            registry=registry,
        )
        self.error_rate = Gauge(
            "stack_canary_error_rate",
            "The canary's 5xx share over its last judged interval.",
            ["splitter", "api"],
            registry=registry,
        )
        self.latency_ratio = Gauge(
            "stack_canary_latency_ratio",
            "Canary p99 / baseline p99 over the last judged interval.",
            ["splitter", "api"],
            registry=registry,
        )


class CanaryRunner:
    """Runs every splitter's canary; `weights()` is what the gateway's routes should say now."""

    def __init__(
        self,
        splitters: list[SplitterConfig],
        store: Store | Path,
        source: Source,
        *,
        registry: CollectorRegistry | None = None,
        overridden: Callable[[], set[str]] = set,
        services: Callable[[SplitterConfig], dict[str, str]] | None = None,
        on_change: Callable[[], Awaitable[None]] | None = None,
        busy: Callable[[str], str | None] = lambda api: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = FileStore(store / STATE_FILE) if isinstance(store, Path) else store
        self.source = source
        self.metrics = Metrics(registry)
        self.overridden = overridden  # splitters whose weights `stack split` set
        self.services = services  # API -> the gateway's service for it in a splitter (observed shares)
        self.on_change = on_change  # a gateway not fed from weights() (Nomad's) is sent them
        self.busy = busy  # why an API cannot be judged now (its new version is still rolling out)
        self.clock = clock
        self.states: dict[str, CanaryState] = parse_states(self.store.load(), str(self.store))
        self.marks: dict[str, Counters] = {}  # splitter -> the counters when its current step started
        self.gateway_history: deque[tuple[float, dict[str, float]]] = deque()
        self.observed: dict[str, dict[str, Any]] = {}
        self.observed_at = 0.0
        self.saved: dict[str, Any] | None = None
        self.configure(splitters)

    def configure(self, splitters: list[SplitterConfig]) -> None:
        """Take the spec's splitters (a `stack up`): a new revision of a canary starts it over."""
        self.splitters = splitters
        now = self.clock()
        for s in splitters:
            state = self.states.get(s.name)
            if s.canary is None:
                self.states.pop(s.name, None)
            elif state is None or state.revision != s.canary.revision or state.api != s.canary.api:
                self.states[s.name] = start(s.name, s.canary, now)
                self.marks.pop(s.name, None)
                self._count(s, self.states[s.name].decisions[-1])
                LOGGER.info(f"splitter {s.name}: canary {s.canary.api} starts at {s.canary.steps[0]}%")
        for name in [n for n in self.states if n not in {s.name for s in splitters}]:
            del self.states[name]
        self._save()

    def weights(self) -> dict[str, dict[str, int]]:
        """Splitter -> API weights, for the splitters whose canary sets them."""
        result = {}
        for s in list(self.splitters):
            state = self.states.get(s.name)
            if s.canary is not None and state is not None and state.phase != STOPPED:
                result[s.name] = weights_at(s.weights, s.canary.api, state.weight(s.canary))
        return result

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                await self.tick()
            except Exception:  # never dies: the next tick comes anyway
                LOGGER.exception("canary pass failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), TICK)

    async def tick(self) -> None:
        before = self.weights()
        # Only a canary cares which weights were set by hand (on Nomad that is a read of a variable).
        overridden = await asyncio.to_thread(self.overridden) if self.states else set()
        for s in self.splitters:
            state = self.states.get(s.name)
            if s.canary is not None and state is not None:
                await self._step(s, s.canary, state, s.name in overridden)
                self._export(s, self.states[s.name])
        await self._observe()
        await asyncio.to_thread(self._save)
        if self.weights() != before and self.on_change is not None:
            await self.on_change()

    async def _step(self, s: SplitterConfig, canary: CanaryConfig, state: CanaryState, overridden: bool) -> None:
        now = self.clock()
        if overridden and state.phase == PROGRESSING:
            state.phase = STOPPED
            self._decide(s, state, Decision(now, "stop", state.weight(canary), "stopped: weights set by `stack split`"))
        elif not overridden and state.phase == STOPPED:
            # `stack up` dropped the hand-set weights: the canary starts over.
            state = self.states[s.name] = start(s.name, canary, now, f"weights set by hand no more: {canary.steps[0]}%")
            self.marks.pop(s.name, None)
            self._count(s, state.decisions[-1])
        if state.phase != PROGRESSING:
            return
        apis = [api for api, _ in s.weights]
        baseline = [api for api in apis if api != canary.api]
        rolling = await asyncio.to_thread(self.busy, canary.api)
        if rolling:
            # Old and new replicas both answer: the step is judged on the new version alone, once it is out.
            self.marks.pop(s.name, None)
            state.step_started = now
            reason = f"hold: {rolling}; the step starts after it"
            if state.decisions[-1].reason != reason:
                state.record(Decision(now, "hold", state.weight(canary), reason))
            return
        mark = self.marks.get(s.name)
        if mark is None:
            taken = await self.source.counters(apis)
            if isinstance(taken, Counters):
                # The step is judged on what happens from now on (after a restart, too).
                self.marks[s.name], state.step_started = taken, now
            elif due(canary, state, now):
                self._decide(s, state, judge(canary, state, taken, now))
            return
        if not due(canary, state, now):
            return
        taken = await self.source.counters(apis)
        measured = measure(mark, taken, canary.api, baseline) if isinstance(taken, Counters) else taken
        self._decide(s, state, judge(canary, state, measured, self.clock()))
        if isinstance(taken, Counters):
            self.marks[s.name] = taken  # the next interval starts where this one ended
        else:
            self.marks.pop(s.name, None)

    def _decide(self, s: SplitterConfig, state: CanaryState, decision: Decision) -> None:
        if decision is not state.decisions[-1]:
            state.record(decision)
        self._count(s, decision)
        if decision.action != "hold":
            LOGGER.info(f"splitter {s.name}: canary {state.api}: {decision.reason}")

    async def _observe(self) -> None:
        """Each API's share of what its splitter sent over the last minute, from the gateway's counters."""
        now = self.clock()
        if self.services is None or not self.splitters or now - self.observed_at < OBSERVE_EVERY:
            return
        self.observed_at = now
        names = {s.name: self.services(s) for s in self.splitters}
        totals = await self.source.gateway(sorted({svc for m in names.values() for svc in m.values()}))
        if isinstance(totals, str):
            self.observed = {name: {"at": now, "shares": None, "error": totals} for name in names}
            return
        self.gateway_history.append((now, totals))
        while len(self.gateway_history) > 1 and self.gateway_history[1][0] <= now - OBSERVED_WINDOW:
            self.gateway_history.popleft()
        oldest = self.gateway_history[0][1]
        sent = _delta(oldest, totals)
        for name, members in names.items():
            counts = {api: sent.get(service, 0.0) for api, service in members.items()}
            total = sum(counts.values())
            shares = {api: round(c / total, 4) for api, c in counts.items()} if total else None
            self.observed[name] = {"at": now, "shares": shares, "requests": total}

    def _count(self, splitter: SplitterConfig, decision: Decision) -> None:
        assert splitter.canary is not None
        self.metrics.decisions.labels(splitter.name, splitter.canary.api, decision.action).inc()

    def _export(self, splitter: SplitterConfig, state: CanaryState) -> None:
        assert splitter.canary is not None
        api = splitter.canary.api
        self.metrics.weight.labels(splitter.name, api).set(state.weight(splitter.canary))
        for phase in PHASES:
            self.metrics.phase.labels(splitter.name, api, phase).set(1 if state.phase == phase else 0)
        judged = next((d for d in reversed(state.decisions) if d.error_rate is not None), None)
        if judged is not None:
            self.metrics.error_rate.labels(splitter.name, api).set(judged.error_rate or 0.0)
            if judged.latency_ratio is not None:
                self.metrics.latency_ratio.labels(splitter.name, api).set(judged.latency_ratio)

    def _save(self) -> None:
        data = {
            "canaries": {name: state.to_dict() for name, state in self.states.items()},
            "observed": self.observed,
        }
        if data == self.saved:
            return
        try:
            self.store.save(data)
            self.saved = json.loads(json.dumps(data))
        except Exception as exc:  # a full disk, an unreachable cluster: the next tick tries again
            LOGGER.warning(f"cannot save the canaries to {self.store}: {exc}")


class Store(Protocol):
    """Where the canaries' state lives between runs, and where `stack status` reads it."""

    def load(self) -> Any: ...

    def save(self, data: dict[str, Any]) -> None: ...


class FileStore:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __str__(self) -> str:
        return str(self.path)

    def load(self) -> Any:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            LOGGER.warning(f"{self.path} is unreadable ({exc}); canaries start afresh")
            return None

    def save(self, data: dict[str, Any]) -> None:
        write_json_atomic(self.path, data)


def parse_states(data: Any, where: str = "the saved state") -> dict[str, CanaryState]:
    """The saved canaries; an unreadable entry is a fresh start, said once."""
    states = {}
    canaries = data.get("canaries") if isinstance(data, dict) else None
    for name, entry in canaries.items() if isinstance(canaries, dict) else ():
        try:
            states[str(name)] = CanaryState.from_dict(entry)
        except (TypeError, ValueError) as exc:
            LOGGER.warning(f"{where}: the canary of {name} is unreadable ({exc}); it starts afresh")
    return states


def parse_observed(data: Any) -> dict[str, dict[str, Any]]:
    observed = data.get("observed") if isinstance(data, dict) else None
    return {str(k): v for k, v in observed.items() if isinstance(v, dict)} if isinstance(observed, dict) else {}


def _regex(value: str) -> str:
    return "".join(f"\\\\{c}" if not c.isalnum() and c not in "_-" else c for c in value)


def _percent(value: float) -> str:
    return f"{value * 100:.2f}%".replace(".00%", "%")


def _ms(value: float | None) -> str:
    return "none" if value is None else f"{value * 1000:.1f}ms"
