"""Replay a load trace against a model of replicas to compare scaling policies.

    python -m stack.control.autoscale.sim            # every trace, both policies, as a table

A fluid model with one-second steps: requests arrive at the trace's rate, each
ready replica serves `1 / service_time` requests a second per unit of target
concurrency, the rest wait in a queue; a new replica serves only after
`startup` seconds. The policy sees the in-flight count (executing + queued)
averaged over its window, ticks every `tick` seconds, exactly as the real
autoscaler does. Reported: replica-seconds (cost), p99 and mean queue wait
(what users feel), and the number of scale events (churn).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from stack.control.autoscale.policy import POLICIES, Bounds, History, Observation, Policy


@dataclass(frozen=True)
class Model:
    service_time: float = 0.5  # seconds of one request on one replica
    startup: float = 30.0  # seconds from asking for a replica to it serving
    tick: float = 10.0  # seconds between autoscaler decisions (Cortex's)
    max_concurrency: int = 100  # per replica: executing + queued, beyond it requests get 503


@dataclass(frozen=True)
class SimResult:
    policy: str
    trace: str
    replica_seconds: float
    p99_wait: float
    mean_wait: float
    scale_events: int
    max_replicas: int
    rejected: float = 0.0  # share of requests answered 503 (replicas at max_concurrency)


def traces() -> dict[str, list[float]]:
    """Arrival rates in requests per second, one entry a second."""
    step = [2.0] * 120 + [20.0] * 600 + [2.0] * 600
    spike = [4.0] * 300 + [40.0] * 60 + [4.0] * 600
    ramp = [30.0 * t / 900 for t in range(900)] + [30.0 * (1 - t / 900) for t in range(900)]
    diurnal = [10 + 8 * math.sin(2 * math.pi * t / 3600) for t in range(7200)]
    return {"step": step, "spike": spike, "ramp": ramp, "diurnal": diurnal}


def simulate(trace: list[float], policy: Policy, bounds: Bounds, model: Model = Model()) -> SimResult:
    rate_per_replica = bounds.target / model.service_time
    replicas: list[float] = [0.0] * bounds.min_replicas  # the second each one became/becomes ready
    backlog = 0.0
    samples: deque[float] = deque(maxlen=max(int(bounds.window), 1))
    history = History()
    waits: list[tuple[float, float]] = []  # (wait seconds, requests that waited it)
    replica_seconds = 0.0
    events = 0
    peak = len(replicas)
    rejected = 0.0
    for second, arrivals in enumerate(trace):
        ready = sum(1 for at in replicas if at <= second)
        capacity = ready * rate_per_replica
        room = max(ready, 1) * model.max_concurrency - backlog
        admitted = min(arrivals, max(room, 0.0))
        rejected += arrivals - admitted
        backlog += admitted
        served = min(backlog, capacity)
        backlog -= served
        waits.append((backlog / capacity if capacity else float(model.startup), arrivals))
        samples.append(backlog + served * model.service_time)  # queued + executing
        replica_seconds += len(replicas)
        if second % int(model.tick) == 0 and second > 0:
            short = list(samples)[-int(bounds.panic_window) :]
            obs = Observation(
                now=float(second),
                current=len(replicas),
                ready=ready,
                in_flight=sum(samples) / len(samples),
                in_flight_short=sum(short) / len(short),
            )
            desired = policy(obs, history, bounds).desired
            if desired != len(replicas):
                events += 1
                replicas = _resize(replicas, desired, second + model.startup)
                peak = max(peak, len(replicas))
    total = sum(trace) or 1.0
    return SimResult("", "", replica_seconds, _quantile(waits, 0.99), _mean(waits), events, peak, rejected / total)


def _resize(replicas: list[float], desired: int, ready_at: float) -> list[float]:
    if desired > len(replicas):
        return replicas + [ready_at] * (desired - len(replicas))
    # Remove the ones still starting first (latest ready time), then the newest.
    return sorted(replicas)[:desired]


def _quantile(weighted: list[tuple[float, float]], q: float) -> float:
    total = sum(w for _, w in weighted)
    if total == 0:
        return 0.0
    running = 0.0
    for value, weight in sorted(weighted):
        running += weight
        if running >= q * total:
            return value
    return weighted[-1][0]


def _mean(weighted: list[tuple[float, float]]) -> float:
    total = sum(w for _, w in weighted)
    return sum(v * w for v, w in weighted) / total if total else 0.0


def compare(
    bounds: Bounds | None = None, model: Model = Model(), policies: dict[str, Policy] | None = None
) -> list[SimResult]:
    bounds = bounds or Bounds(min_replicas=1, max_replicas=40, target=1.0)
    results = []
    for trace_name, trace in traces().items():
        for policy_name, policy in (policies or POLICIES).items():
            result = simulate(trace, policy, bounds, model)
            results.append(
                SimResult(
                    policy_name,
                    trace_name,
                    result.replica_seconds,
                    result.p99_wait,
                    result.mean_wait,
                    result.scale_events,
                    result.max_replicas,
                    result.rejected,
                )
            )
    return results


def main() -> None:
    for r in compare():
        print(
            f"{r.trace:<8} {r.policy:<7} replica-s {r.replica_seconds:9.0f}  p99 wait {r.p99_wait:6.2f}s  "
            f"mean wait {r.mean_wait:6.2f}s  scale events {r.scale_events:3d}  peak {r.max_replicas}  "
            f"503 {r.rejected:.1%}"
        )


if __name__ == "__main__":
    main()
