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
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge

from stack.atomic import write_json_atomic
from stack.control.canary_sources import Counters, Measurement, NoData, Source, delta, measure
from stack.spec.units import format_duration
from stack.splits import CanaryConfig, SplitterConfig, read_overrides, weights_at
from stack.status import CanaryStatus, SplitterStatus

LOGGER = logging.getLogger("stack.control.canary")
STATE_FILE = "canary.json"
KEPT_DECISIONS = 20
OBSERVED_WINDOW = 60.0  # `stack status` shows each API's share of a splitter's requests over the last minute
OBSERVE_EVERY = 5.0
TICK = 1.0


class CanaryPhase(StrEnum):
    PROGRESSING = "progressing"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled back"
    STOPPED = "stopped"


class CanaryAction(StrEnum):
    START = "start"
    ADVANCE = "advance"
    HOLD = "hold"
    ROLLBACK = "rollback"
    PROMOTE = "promote"
    STOP = "stop"


PROGRESSING, PROMOTED, ROLLED_BACK, STOPPED = (
    CanaryPhase.PROGRESSING,
    CanaryPhase.PROMOTED,
    CanaryPhase.ROLLED_BACK,
    CanaryPhase.STOPPED,
)
PHASES = tuple(CanaryPhase)


@dataclass
class Decision:
    """One judgement, with its numbers, as `stack status` shows it."""

    at: float  # unix time
    action: CanaryAction
    weight: int  # the canary's percent of the splitter after this decision
    reason: str  # for people: the rule and its numbers
    requests: float | None = None
    error_rate: float | None = None
    latency_ratio: float | None = None
    count: int = 1  # the same hold, repeated
    # Which rule decided (a short fixed word: no_data, min_requests, no_latency, rolling_out, error_rate,
    # latency, healthy, ...): the same hold for the same rule is counted, not listed again.
    rule: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Decision:
        return cls(**{**data, "action": CanaryAction(data["action"])})


@dataclass
class CanaryState:
    splitter: str
    api: str
    revision: str
    phase: CanaryPhase
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
            and decision.action == CanaryAction.HOLD == last.action
            and (last.weight, last.rule) == (decision.weight, decision.rule)
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
        values["decisions"] = [Decision.from_dict(d) for d in data.get("decisions", [])]
        if values.get("phase") not in PHASES or not isinstance(values.get("step"), int):
            raise ValueError(f"unknown canary phase {values.get('phase')!r}")
        values["phase"] = CanaryPhase(values["phase"])
        return cls(**values)


def start(splitter: str, config: CanaryConfig, now: float, why: str = "") -> CanaryState:
    state = CanaryState(splitter, config.api, config.revision, PROGRESSING, 0, now)
    reason = why or f"new version of {config.api}: {config.steps[0]}% for {format_duration(config.interval)}"
    if len(config.steps) == 1:  # one step is a plain switch: there is no further step to earn
        state.phase = PROMOTED
        reason = f"{config.api} gets {config.steps[0]}% at once (one step)"
    state.record(Decision(now, CanaryAction.START, config.steps[0], reason, rule="start"))
    return state


def due(config: CanaryConfig, state: CanaryState, now: float) -> bool:
    return state.phase == PROGRESSING and now - state.step_started >= config.interval


def judge(config: CanaryConfig, state: CanaryState, measured: Measurement | NoData, now: float) -> Decision:
    """Decide the step whose interval just ended, and move `state` on (a pure function of its inputs)."""
    weight = state.weight(config)
    hold = CanaryAction.HOLD
    if isinstance(measured, NoData):
        state.step_started = now
        decision = Decision(
            now, hold, weight, f"hold: no data ({measured.reason}); the step starts over", rule="no_data"
        )
        state.record(decision)
        return decision
    numbers: dict[str, Any] = {"requests": round(measured.requests, 1), "error_rate": round(measured.error_rate, 5)}
    if measured.requests < config.min_requests:
        state.step_started = now
        reason = f"hold: {measured.requests:.0f} requests < min_requests {config.min_requests}; the step starts over"
        decision = Decision(now, hold, weight, reason, rule="min_requests", **numbers)
        state.record(decision)
        return decision
    ratio = _latency_ratio(config, measured)
    numbers["latency_ratio"] = ratio
    if measured.error_rate > config.max_error_rate:
        state.phase = ROLLED_BACK
        reason = (
            f"rollback: error rate {_percent(measured.error_rate)} > max_error_rate {_percent(config.max_error_rate)} "
            f"({measured.errors:.0f} of {measured.requests:.0f} requests at {weight}%)"
        )
        decision = Decision(now, CanaryAction.ROLLBACK, 0, reason, rule="error_rate", **numbers)
    elif config.max_latency_ratio is not None and ratio is None:
        state.step_started = now
        reason = "hold: no p99 latency for the canary or its baseline"
        decision = Decision(now, hold, weight, reason, rule="no_latency", **{**numbers, "latency_ratio": None})
    elif config.max_latency_ratio is not None and ratio is not None and ratio > config.max_latency_ratio:
        state.phase = ROLLED_BACK
        reason = (
            f"rollback: p99 {_ms(measured.canary_p99)} is {ratio:.2f}x the baseline's {_ms(measured.baseline_p99)} "
            f"> max_latency_ratio {config.max_latency_ratio:g} (at {weight}%)"
        )
        decision = Decision(now, CanaryAction.ROLLBACK, 0, reason, rule="latency", **numbers)
    else:
        state.step += 1
        state.step_started = now
        within = f"error rate {_percent(measured.error_rate)} over {measured.requests:.0f} requests" + (
            f", p99 ratio {ratio:.2f}" if ratio is not None else ""
        )
        if state.step >= len(config.steps) - 1:
            state.step = len(config.steps) - 1
            state.phase = PROMOTED
            reason = f"promoted to {state.weight(config)}%: {within}"
            decision = Decision(now, CanaryAction.PROMOTE, state.weight(config), reason, rule="healthy", **numbers)
        else:
            reason = f"advance {weight}% -> {state.weight(config)}%: {within}"
            decision = Decision(now, CanaryAction.ADVANCE, state.weight(config), reason, rule="healthy", **numbers)
    state.record(decision)
    return decision


def _latency_ratio(config: CanaryConfig, measured: Measurement) -> float | None:
    if measured.canary_p99 is None or measured.baseline_p99 is None:
        return None
    floor = config.latency_floor
    return round(max(measured.canary_p99, floor) / max(measured.baseline_p99, floor), 3)


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
        self.unpublished = False  # weights changed that on_change has not sent yet
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
        self.unpublished = self.unpublished or self.weights() != before
        if self.unpublished and self.on_change is not None:
            # The gateway first: what `stack status` reads from the store never runs ahead of the routes.
            try:
                await self.on_change()
                self.unpublished = False
            except Exception:  # the next tick publishes again
                LOGGER.exception("cannot send the canaries' weights to the gateway")
        await asyncio.to_thread(self._save)

    async def _step(self, s: SplitterConfig, canary: CanaryConfig, state: CanaryState, overridden: bool) -> None:
        now = self.clock()
        if overridden and state.phase == PROGRESSING:
            state.phase = STOPPED
            stop = Decision(now, CanaryAction.STOP, state.weight(canary), "stopped: weights set by `stack split`")
            self._decide(s, state, replace(stop, rule="set_by_hand"))
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
                state.record(Decision(now, CanaryAction.HOLD, state.weight(canary), reason, rule="rolling_out"))
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
        if decision.action != CanaryAction.HOLD:
            LOGGER.info(f"splitter {s.name}: canary {state.api}: {decision.reason}")

    async def _observe(self) -> None:
        """Each API's share of what its splitter sent over the last minute, from the gateway's counters."""
        now = self.clock()
        if self.services is None or not self.splitters or now - self.observed_at < OBSERVE_EVERY:
            return
        self.observed_at = now
        names = {s.name: self.services(s) for s in self.splitters}
        totals = await self.source.gateway(sorted({svc for m in names.values() for svc in m.values()}))
        if isinstance(totals, NoData):
            self.observed = {name: {"at": now, "shares": None, "error": totals.reason} for name in names}
            return
        self.gateway_history.append((now, totals))
        while len(self.gateway_history) > 1 and self.gateway_history[1][0] <= now - OBSERVED_WINDOW:
            self.gateway_history.popleft()
        oldest = self.gateway_history[0][1]
        sent = delta(oldest, totals)
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


def _percent(value: float) -> str:
    return f"{value * 100:.2f}%".replace(".00%", "%")


def _ms(value: float | None) -> str:
    return "none" if value is None else f"{value * 1000:.1f}ms"


# -- what `stack status` shows of the splitters --------------------------------------------------


def splitter_status(splitters: list[SplitterConfig], state_dir: Path) -> list[SplitterStatus]:
    """`stack status` of the splitters whose state lives in files (the local and Compose targets)."""
    return status_of(splitters, read_overrides(state_dir), FileStore(state_dir / STATE_FILE).load())


def status_of(
    splitters: list[SplitterConfig], overrides: dict[str, dict[str, int]], saved: Any
) -> list[SplitterStatus]:
    """Each splitter as the gateway runs it: weights and where they come from, its canary, observed shares."""
    canaries, observed = parse_states(saved), parse_observed(saved)
    result = []
    for s in splitters:
        state = canaries.get(s.name)
        canary = None
        weights = dict(s.weights)
        if s.canary is not None and state is not None:
            canary = CanaryStatus(
                state.api,
                state.phase,
                state.weight(s.canary),
                list(s.canary.steps),
                state.step_started,
                s.canary.interval,
                [asdict(d) for d in state.decisions],
            )
            if state.phase != STOPPED:
                weights = weights_at(s.weights, s.canary.api, state.weight(s.canary))
        seen = observed.get(s.name) or {}
        result.append(
            SplitterStatus(
                s.name,
                s.endpoint,
                dict(overrides.get(s.name) or weights),
                s.name in overrides,
                f"{s.mirror[0]} ({s.mirror[1]}%)" if s.mirror else "",
                canary,
                seen.get("shares") if isinstance(seen.get("shares"), dict) else None,
            )
        )
    return result
