"""The scaling decision: a pure function of the inputs, the history and the spec.

`cortex_policy` is Cortex's algorithm (v0.42): desired = ceil(in-flight /
target), a tolerance dead band, step limits of the up/down factors but always
±1, min/max, then stabilization — never below the highest recommendation of
the last `downscale_stabilization_period`, never above the lowest of the last
`upscale_stabilization_period`.

`stack_policy` starts from it and adds three things, each measured in
`stack.control.autoscale.sim` (see bench/RESULTS.md):

- Starting replicas are credited: while any replica asked for is still
  starting, no further step up is taken; the queue that made us ask for it
  is not yet its to drain. A burst is answered once, not again on every tick
  of the start-up time (the Nomad Autoscaler's over-placement complaint).
- No step up while in flight is falling (short window below the long one by
  more than the tolerance): by Little's law requests then finish faster than
  they arrive, so the ready replicas already exceed demand and what remains
  is a queue draining. Without it the queue built up during a start-up reads
  as demand and overshoots (measured: -19% replica-seconds on the step trace,
  -19% on diurnal, the same waits).
- Panic mode (Knative): when the short-window load reaches twice what the
  ready replicas can take, scale to the short-window demand at once, skipping
  upscale stabilization; and do not scale down until the panic has been over
  for a whole stable window.

Missing data never scales: no sample (Prometheus down, an empty result, NaN,
a stale series) holds the current count and says why.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

PANIC_THRESHOLD = 2.0  # short-window load / ready capacity that starts a panic (Knative's default 200 %)


@dataclass(frozen=True)
class Bounds:
    """The autoscaling fields of one API, in seconds and replicas."""

    min_replicas: int
    max_replicas: int
    target: float  # target in-flight requests per replica
    window: float = 60.0
    upscale_stabilization: float = 60.0
    downscale_stabilization: float = 300.0
    max_upscale_factor: float = 1.5
    max_downscale_factor: float = 0.75
    upscale_tolerance: float = 0.05
    downscale_tolerance: float = 0.05
    idle_timeout: float = 600.0  # with min_replicas 0: no request for this long scales the API to zero
    target_gpu_utilization: float | None = None  # 0..1: also scale on the replicas' GPU utilization

    @property
    def panic_window(self) -> float:
        return max(self.window / 10, 1.0)


@dataclass(frozen=True)
class Observation:
    """What the autoscaler sees at one tick. `in_flight` is None when the data is missing."""

    now: float
    current: int  # replicas asked for (ready + starting)
    ready: int
    in_flight: float | None  # total over replicas, averaged over `window`
    in_flight_short: float | None = None  # the same over the panic window
    missing_reason: str = ""
    idle_for: float | None = None  # seconds since the API's last request (None: unknown)
    gpu_utilization: float | None = None  # 0..1, the replicas' GPUs averaged over `window` (None: unknown)


class ScaleAction(StrEnum):
    UP = "up"
    DOWN = "down"
    HOLD = "hold"

    @classmethod
    def of(cls, current: int, desired: int) -> ScaleAction:
        return cls.UP if desired > current else cls.DOWN if desired < current else cls.HOLD


@dataclass(frozen=True)
class Decision:
    desired: int
    reason: str  # for people: the rule and its inputs
    recommendation: int | None = None
    rule: str = "target"  # for metrics: which rule decided (a short, fixed label value)


@dataclass
class History:
    """Recommendations over time, and the panic state: the policy's memory between ticks."""

    recommendations: deque[tuple[float, int]] = field(default_factory=deque)
    panic_until: float = 0.0
    started_at: float | None = None

    def add(self, now: float, recommendation: int, keep: float) -> None:
        self.recommendations.append((now, recommendation))
        while self.recommendations and self.recommendations[0][0] < now - keep:
            self.recommendations.popleft()

    def within(self, now: float, period: float) -> list[int]:
        return [rec for at, rec in self.recommendations if at >= now - period]


def _step(raw: float, current: int, bounds: Bounds) -> int:
    """Cortex: round up, ignore changes inside the tolerances, bound the step, clamp."""
    recommendation = math.ceil(raw)
    if current * (1 - bounds.downscale_tolerance) < raw < current:
        recommendation = current
    if current < raw < current * (1 + bounds.upscale_tolerance):
        recommendation = current
    lowest = min(current - 1, math.ceil(current * bounds.max_downscale_factor))
    highest = max(current + 1, math.ceil(current * bounds.max_upscale_factor))
    recommendation = min(max(recommendation, lowest), highest)
    return min(max(recommendation, bounds.min_replicas), bounds.max_replicas)


def cortex_policy(obs: Observation, history: History, bounds: Bounds) -> Decision:
    current = obs.current
    if obs.in_flight is None or math.isnan(obs.in_flight):
        return Decision(current, f"hold: no data ({obs.missing_reason or 'no sample'})", rule="no_data")
    if current < bounds.min_replicas or current > bounds.max_replicas:
        clamped = min(max(current, bounds.min_replicas), bounds.max_replicas)
        return Decision(clamped, f"clamp to min/max ({bounds.min_replicas}..{bounds.max_replicas})", rule="min_max")
    if history.started_at is None:
        history.started_at = obs.now
    raw = obs.in_flight / bounds.target
    signal = f"in-flight {obs.in_flight:.2f}, target {bounds.target:g}/replica"
    if bounds.target_gpu_utilization and obs.gpu_utilization is not None and current > 0:
        # As Kubernetes' HPA does for utilization: the replicas that would bring it to the target.
        by_gpu = current * obs.gpu_utilization / bounds.target_gpu_utilization
        if by_gpu > raw:
            raw = by_gpu
            signal = f"GPU utilization {obs.gpu_utilization:.0%}, target {bounds.target_gpu_utilization:.0%}"
    recommendation = _step(raw, current, bounds)
    history.add(obs.now, recommendation, max(bounds.upscale_stabilization, bounds.downscale_stabilization))
    age = obs.now - history.started_at
    desired = recommendation
    if desired < current:
        if age < bounds.downscale_stabilization:
            return Decision(current, "hold: downscale stabilization (just started)", recommendation, "stabilization")
        floor = min(max(history.within(obs.now, bounds.downscale_stabilization)), current)
        desired = max(desired, floor)
        held = ("hold: downscale stabilization", "stabilization")
        reason, rule = ("scale down", "target") if desired < current else held
    elif desired > current:
        if age < bounds.upscale_stabilization:
            return Decision(current, "hold: upscale stabilization (just started)", recommendation, "stabilization")
        ceiling = max(min(history.within(obs.now, bounds.upscale_stabilization)), current)
        desired = min(desired, ceiling)
        held = ("hold: upscale stabilization", "stabilization")
        reason, rule = ("scale up", "target") if desired > current else held
    else:
        if raw == current or math.ceil(raw) == current:
            reason, rule = "hold: at target", "target"
        elif raw < current <= bounds.min_replicas:
            reason, rule = "hold: at min_replicas", "min_max"
        elif raw > current >= bounds.max_replicas:
            reason, rule = "hold: at max_replicas", "min_max"
        else:
            reason, rule = "hold: within tolerance", "tolerance"
    return Decision(desired, f"{reason} ({signal})", recommendation, rule)


def stack_policy(obs: Observation, history: History, bounds: Bounds) -> Decision:
    return _to_zero(obs, bounds, _stack(obs, history, bounds, STACK_RULES))


def _to_zero(obs: Observation, bounds: Bounds, decision: Decision) -> Decision:
    """min_replicas 0: zero only after `idle_timeout` without a request; until then at least one replica.

    Waking from zero is the activator's job (a request arrives, it asks for a replica), so at
    zero nothing here scales up: no replica means no series, which holds the count.
    """
    if bounds.min_replicas > 0 or obs.current == 0:
        return decision
    idle = obs.idle_for
    settled = obs.ready == obs.current  # a replica still starting was just woken (or replaced): not idle
    if idle is not None and idle >= bounds.idle_timeout and obs.in_flight == 0 and settled:
        return Decision(
            0,
            f"scale to zero: no request for {idle:.0f}s (idle_timeout {bounds.idle_timeout:g}s)",
            decision.recommendation,
            "idle",
        )
    if decision.desired == 0:
        left = "unknown" if idle is None else f"{max(bounds.idle_timeout - idle, 0):.0f}s to go"
        return Decision(1, f"hold: 1 replica until idle for idle_timeout ({left})", decision.recommendation, "idle")
    return decision


STACK_RULES = frozenset({"starting", "draining", "panic"})


def stack_policy_without(rule: str) -> Policy:
    """Ours minus one of its rules: how the simulator measures what each one is worth."""
    rules = STACK_RULES - {rule}
    return lambda obs, history, bounds: _stack(obs, history, bounds, rules)


def _stack(obs: Observation, history: History, bounds: Bounds, rules: frozenset[str]) -> Decision:
    current = obs.current
    if obs.in_flight is None or math.isnan(obs.in_flight):
        return Decision(current, f"hold: no data ({obs.missing_reason or 'no sample'})", rule="no_data")
    starting = current - obs.ready
    panic = _panic(obs, history, bounds) if "panic" in rules else None
    decision = panic or cortex_policy(obs, history, bounds)
    if "starting" in rules and decision.desired > current and starting > 0:
        # Credit the replicas still starting: the queue they were asked for is not yet
        # theirs to drain, so asking again now would answer the same burst twice.
        return Decision(
            current,
            f"hold: {starting} replica(s) still starting (in-flight {obs.in_flight:.2f})",
            decision.recommendation,
            "starting",
        )
    short = obs.in_flight_short
    falling = short is not None and short < obs.in_flight * (1 - bounds.downscale_tolerance)
    if "draining" in rules and decision.desired > current and falling:
        # In flight is falling: requests finish faster than they arrive, so the replicas
        # serving now already exceed demand and the rest is a queue draining.
        return Decision(
            current,
            f"hold: in-flight falling ({short:.2f} now, {obs.in_flight:.2f} over the window): the queue is draining",
            decision.recommendation,
            "draining",
        )
    if decision.desired < current and obs.now < history.panic_until:
        return Decision(current, "hold: no scale-down right after a panic", decision.recommendation, "panic")
    return decision


def _panic(obs: Observation, history: History, bounds: Bounds) -> Decision | None:
    short = obs.in_flight_short
    if short is None or math.isnan(short) or obs.ready <= 0:
        return None
    load = short / (obs.ready * bounds.target)
    if load < PANIC_THRESHOLD:
        return None
    history.panic_until = obs.now + bounds.window  # scale-down waits a stable window after the panic
    # At most double per tick: a deep queue overstates demand, and doubling reaches
    # any size in a few ticks (start-up time dominates anyway).
    wanted = min(max(math.ceil(short / bounds.target), obs.current), 2 * obs.current, bounds.max_replicas)
    if wanted <= obs.current:
        return Decision(
            obs.current, f"hold: panic, already at {obs.current} (short-window in-flight {short:.2f})", rule="panic"
        )
    return Decision(wanted, f"panic: short-window in-flight {short:.2f} is {load:.1f}× ready capacity", rule="panic")


@dataclass(frozen=True)
class WorkingSet:
    """An API with model affinity: the distinct models requested within the window, and how many one replica
    holds (its models' cache_size, or as observed: `loads_per_minute` then says what not holding them costs)."""

    in_use: int
    per_replica: int
    loads_per_minute: float | None = None  # set when per_replica was observed, not given by cache_size


def hold_models(decision: Decision, current: int, bounds: Bounds, models: WorkingSet) -> Decision:
    """Enough replicas to hold the models in use: when they exceed what the replicas the policy wants can
    hold (cache_size each), one more replica (up to max_replicas), and never fewer than they need."""
    needed = min(math.ceil(models.in_use / models.per_replica), bounds.max_replicas)
    if needed <= decision.desired:
        return decision
    desired = max(decision.desired, min(needed, current + 1)) if needed > current else needed
    if desired == current and decision.desired == current:
        return decision
    each = (
        f"cache_size {models.per_replica} each"
        if models.loads_per_minute is None
        else f"{models.per_replica} each, as their evictions showed; {models.loads_per_minute:.0f} loads/min"
    )
    reason = (
        f"models in use ({models.in_use}) exceed what {decision.desired} replica(s) hold ({each}): {desired} replica(s)"
    )
    return Decision(desired, reason, decision.recommendation, "models")


Policy = Callable[[Observation, History, Bounds], Decision]
POLICIES: dict[str, Policy] = {
    "cortex": lambda obs, history, bounds: _to_zero(obs, bounds, cortex_policy(obs, history, bounds)),
    "stack": stack_policy,
}
