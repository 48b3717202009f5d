"""The control loop: signal in, policy, scaler out, every tick, for every API.

It never dies: a failed read holds the count (the policy sees no data), a
failed scale is retried with back-off, and any other exception is logged and
the next tick comes anyway. Each change is one log line with its inputs and
reason; the last decisions are kept for `stack status` and the loop exports
its own metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge

from stack.atomic import write_json_atomic
from stack.control.autoscale.config import ApiScaling, AutoscalerConfig
from stack.control.autoscale.policy import (
    Decision,
    History,
    Observation,
    Policy,
    ScaleAction,
    WorkingSet,
    hold_models,
    stack_policy,
)
from stack.control.autoscale.scaler import Replicas, Scaler, ScalerBusy
from stack.control.autoscale.signal import Signal
from stack.status import AutoscalerStatus, ScaleChange

LOGGER = logging.getLogger("stack.control.autoscale")
BACKOFF = (2.0, 4.0, 8.0, 16.0, 30.0, 60.0)  # seconds before retrying a scaler that failed
KEPT_DECISIONS = 10


class SignalSource(Protocol):
    async def read(self, api: str, window: float, short_window: float) -> Signal: ...


@dataclass
class ApiLoop:
    """The loop's memory for one API."""

    spec: ApiScaling
    history: History = field(default_factory=History)
    changes: deque[ScaleChange] = field(default_factory=lambda: deque(maxlen=KEPT_DECISIONS))
    last_reason: str = ""  # the latest decision's reason, whole
    last_logged: str = ""  # the rule of the last hold logged: a hold is logged once per rule, not every tick
    failures: int = 0
    retry_at: float = 0.0


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.desired = Gauge(
            "stack_autoscaler_desired_replicas", "Replicas the last decision asked for.", ["api"], registry=registry
        )
        self.current = Gauge(
            "stack_autoscaler_current_replicas", "Replicas asked for and not draining.", ["api"], registry=registry
        )
        self.ready = Gauge("stack_autoscaler_ready_replicas", "Replicas serving traffic.", ["api"], registry=registry)
        self.in_flight = Gauge(
            "stack_autoscaler_in_flight_requests",
            "Requests in flight over the window, summed over replicas (NaN without data).",
            ["api"],
            registry=registry,
        )
        self.decisions = Counter(
            "stack_autoscaler_decisions_total",
            "Decisions, by direction (up, down, hold) and the rule that made them.",
            ["api", "direction", "rule"],
            registry=registry,
        )
        self.errors = Counter(
            "stack_autoscaler_scale_errors_total",
            "Scale calls that failed and will be retried.",
            ["api"],
            registry=registry,
        )


class Autoscaler:
    def __init__(
        self,
        config: AutoscalerConfig,
        scaler: Scaler,
        signal: SignalSource,
        *,
        policy: Policy = stack_policy,
        registry: CollectorRegistry | None = None,
        manual: Callable[[str], bool] = lambda api: False,
        state_file: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
        activity: Callable[[str], float | None] = lambda api: None,
        models: Callable[[str, float], WorkingSet | None] = lambda api, window: None,
    ) -> None:
        self.scaler = scaler
        self.signal = signal
        self.policy = policy
        self.registry = registry or CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.manual = manual
        self.state_file = state_file
        self.clock = clock
        # Unix time of the last request the activator held for an API: a request that woke it counts
        # before Prometheus has scraped the woken replica.
        self.activity = activity
        # An API with model affinity: its models in use within the window, and what one replica holds.
        self.models = models
        self.apis: dict[str, ApiLoop] = {}
        self.saved: dict[str, dict[str, object]] | None = None  # what the state file holds
        self.configure(config)
        self._restore()

    def configure(self, config: AutoscalerConfig) -> None:
        """Take new bounds (a `stack up` changed them) and keep each API's history."""
        self.config = config
        self.apis = {a.name: self.apis.get(a.name) or ApiLoop(a) for a in config.apis}
        for spec in config.apis:
            self.apis[spec.name].spec = spec

    def interval(self) -> float:
        """Seconds between ticks: as often as new data arrives (one scrape), several times a
        window, never more than once a second nor less than every 10 s (Cortex's tick). A burst
        is seen one scrape after it starts, not up to 10 s later."""
        fastest = min((a.spec.bounds.window / 6 for a in self.apis.values()), default=10.0)
        return min(max(min(fastest, self.config.scrape_interval), 1.0), 10.0)

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            await self.tick()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.interval())

    async def tick(self) -> None:
        for state in list(self.apis.values()):
            try:
                await self._tick_api(state)
            except Exception:  # the loop never dies: log it and try again next tick
                LOGGER.exception(f"{state.spec.name}: autoscaler error")
        self._save()

    async def _tick_api(self, state: ApiLoop) -> None:
        api, now = state.spec, self.clock()
        if now < state.retry_at:
            return
        if self.manual(api.name):
            self._hold(state, "hold: set by hand with `stack scale --force`, until the next `stack up`", "manual")
            return
        try:
            replicas = await self.scaler.replicas(api)
        except Exception as exc:
            self._failed(state, f"cannot read the replica count: {exc}")
            return
        self.metrics.current.labels(api.name).set(replicas.current)
        if replicas.busy:
            self._hold(state, f"hold: {replicas.busy}", "busy")
            return
        signal = await self.signal.read(api.name, api.bounds.window, api.bounds.panic_window)
        held_at = self.activity(api.name)
        if held_at is not None:
            since = max(time.time() - held_at, 0.0)
            signal = replace(signal, idle_for=since if signal.idle_for is None else min(signal.idle_for, since))
        observation = self._observe(now, replicas, signal)
        decision = self.policy(observation, state.history, api.bounds)
        working_set = self.models(api.name, api.bounds.window)
        if working_set is not None and observation.in_flight is not None and replicas.current > 0:
            decision = hold_models(decision, replicas.current, api.bounds, working_set)
        slots = len(api.gpu_slots)
        demand = math.ceil(signal.in_flight / api.bounds.target) if signal.in_flight else 0
        if slots and decision.desired >= slots and demand > slots:
            # A GPU API has as many replicas as its placed slots at most: say so rather than ask for more.
            decision = replace(decision, reason=f"{decision.reason}; at GPU capacity ({slots}/{slots} slots)")
        self._record(state, observation, decision)
        if decision.desired == replicas.current:
            return
        change = self._change(state, replicas.current, decision)
        try:
            await self.scaler.scale(api, decision.desired, decision.reason)
        except ScalerBusy as exc:
            change.applied, change.error = False, str(exc)
            LOGGER.info(f"{api.name}: not scaled now, retrying next tick: {exc}")
            return
        except Exception as exc:
            change.applied, change.error = False, str(exc)
            self._failed(state, f"scaling to {decision.desired} failed: {exc}")
            return
        change.applied, change.error = True, ""
        state.failures = 0

    def _change(self, state: ApiLoop, current: int, decision: Decision) -> ScaleChange:
        last = state.changes[-1] if state.changes else None
        if last is not None and not last.applied and (last.current, last.desired) == (current, decision.desired):
            last.attempts += 1
            last.at, last.reason = time.time(), decision.reason
            return last
        change = ScaleChange(time.time(), current, decision.desired, decision.rule, decision.reason)
        state.changes.append(change)
        return change

    def _observe(self, now: float, replicas: Replicas, signal: Signal) -> Observation:
        # Ready and starting counts come from the target, which is what the router
        # follows; Prometheus' predictor_ready lags it by discovery plus a scrape
        # (4 s at a 1 s scrape interval on the local target: the policy then held
        # the next step up for a replica that was already serving).
        return Observation(
            now,
            replicas.current,
            replicas.ready,
            signal.in_flight,
            signal.in_flight_short,
            signal.missing_reason,
            signal.idle_for,
            signal.gpu_utilization,
        )

    def _record(self, state: ApiLoop, obs: Observation, decision: Decision) -> None:
        api = state.spec.name
        direction = ScaleAction.of(obs.current, decision.desired)
        self.metrics.decisions.labels(api, direction, decision.rule).inc()
        self.metrics.desired.labels(api).set(decision.desired)
        self.metrics.ready.labels(api).set(obs.ready)
        self.metrics.in_flight.labels(api).set(math.nan if obs.in_flight is None else obs.in_flight)
        inputs = (
            f"in-flight {_num(obs.in_flight)} (short {_num(obs.in_flight_short)}), "
            f"ready {obs.ready}, starting {obs.current - obs.ready}, target {state.spec.bounds.target:g}/replica"
        )
        if direction != ScaleAction.HOLD:
            change = f"scale {direction} {obs.current} -> {decision.desired}"
            LOGGER.info(f"{api}: {change} [{decision.rule}] {inputs}: {decision.reason}")
        elif decision.rule != state.last_logged:
            LOGGER.info(f"{api}: {obs.current} replicas [{decision.rule}] {inputs}: {decision.reason}")
        state.last_logged = "" if direction != ScaleAction.HOLD else decision.rule
        state.last_reason = decision.reason

    def _hold(self, state: ApiLoop, reason: str, rule: str) -> None:
        self.metrics.decisions.labels(state.spec.name, ScaleAction.HOLD, rule).inc()
        if rule != state.last_logged:
            LOGGER.info(f"{state.spec.name}: {reason}")
        state.last_reason, state.last_logged = reason, rule

    def _failed(self, state: ApiLoop, message: str) -> None:
        state.failures += 1
        delay = BACKOFF[min(state.failures - 1, len(BACKOFF) - 1)]
        state.retry_at = self.clock() + delay
        self.metrics.errors.labels(state.spec.name).inc()
        LOGGER.warning(f"{state.spec.name}: {message}; retrying in {delay:g}s")
        state.last_reason, state.last_logged = message, ""

    def status(self) -> dict[str, AutoscalerStatus]:
        """Each API's last decision and recent count changes (copies: the loop goes on changing its own)."""
        return {
            name: AutoscalerStatus(state.last_reason, [replace(c) for c in state.changes])
            for name, state in self.apis.items()
        }

    def _history_out(self, history: History) -> dict[str, object]:
        """The policy's memory in wall-clock time, so a restarted autoscaler keeps its stabilization windows."""
        offset = time.time() - self.clock()
        return {
            "recommendations": [[at + offset, rec] for at, rec in history.recommendations],
            "panic_until": history.panic_until + offset if history.panic_until else 0.0,
            "started_at": None if history.started_at is None else history.started_at + offset,
        }

    def _restore(self) -> None:
        """Take back the decisions and policy memory a previous run saved (an autoscaler restart forgets nothing)."""
        if self.state_file is None:
            return
        try:
            saved = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return
        if not isinstance(saved, dict):
            return
        offset = time.time() - self.clock()
        for name, state in self.apis.items():
            entry = saved.get(name)
            if not isinstance(entry, dict):
                continue
            try:
                history = entry.get("history") or {}
                for at, rec in history.get("recommendations", []):
                    state.history.recommendations.append((float(at) - offset, int(rec)))
                if history.get("panic_until"):
                    state.history.panic_until = float(history["panic_until"]) - offset
                if history.get("started_at") is not None:
                    state.history.started_at = float(history["started_at"]) - offset
                for change in entry.get("changes", []):
                    state.changes.append(ScaleChange(**change))
                state.last_reason = str(entry.get("last", ""))
            except (TypeError, ValueError, AttributeError):
                LOGGER.warning(
                    f"{name}: the saved autoscaler state in {self.state_file} is unreadable; starting afresh"
                )
                state.history, state.changes = History(), deque(maxlen=KEPT_DECISIONS)
        LOGGER.info(f"took back the saved decisions and stabilization windows from {self.state_file}")

    def _save(self) -> None:
        """The last decisions and the policy's memory, for `stack status` and a restart; written when changed."""
        if self.state_file is None:
            return
        status = {
            name: {**asdict(entry), "history": self._history_out(self.apis[name].history)}
            for name, entry in self.status().items()
        }
        if status == self.saved:
            return
        try:
            write_json_atomic(self.state_file, status)
            self.saved = status
        except OSError as exc:
            LOGGER.warning(f"cannot write {self.state_file}: {exc}")


def _num(value: float | None) -> str:
    return "none" if value is None else f"{value:.2f}"
