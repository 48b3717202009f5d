"""The control loop's promises, with the target and the signal held in memory.

The policy is pinned in test_autoscale_policy.py, the real targets in
test_compose_autoscale.py, test_local.py and test_nomad_scaler.py; here are
the loop's own rules: faults hold or retry and never kill it, min/max hold
whatever the signal says, each API is on its own, and its metrics are valid.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import subprocess

import pytest
from prometheus_client import generate_latest

from stack.control.autoscale.config import ApiScaling, AutoscalerConfig
from stack.control.autoscale.loop import Autoscaler
from stack.control.autoscale.policy import Bounds
from stack.control.autoscale.scaler import Replicas, ScalerBusy
from stack.control.autoscale.signal import Signal

BOUNDS = Bounds(
    min_replicas=1, max_replicas=5, target=1.0, window=6, upscale_stabilization=0, downscale_stabilization=0
)


class Target:
    """An in-memory target: counts per API, and faults to inject."""

    def __init__(self, **counts: int) -> None:
        self.counts = dict(counts)
        self.scale_calls: list[tuple[str, int]] = []
        self.fail_scale: list[Exception] = []
        self.fail_read: Exception | None = None
        self.busy = ""

    async def replicas(self, api: ApiScaling) -> Replicas:
        if self.fail_read is not None:
            raise self.fail_read
        return Replicas(self.counts[api.name], self.counts[api.name], self.busy)

    async def scale(self, api: ApiScaling, count: int, reason: str) -> None:
        self.scale_calls.append((api.name, count))
        if self.fail_scale:
            raise self.fail_scale.pop(0)
        self.counts[api.name] = count


class Load:
    def __init__(self, **in_flight: float | None) -> None:
        self.in_flight = in_flight

    async def read(self, api: str, window: float, short_window: float) -> Signal:
        value = self.in_flight[api]
        if isinstance(value, Exception):
            raise value
        if value is None:
            return Signal(None, None, "Prometheus query failed: connection refused")
        return Signal(value, value)


def make(target: Target, load: Load, *names: str) -> tuple[Autoscaler, list[float]]:
    now = [1000.0]
    config = AutoscalerConfig("shop", 1.0, [ApiScaling(name, BOUNDS) for name in names])
    return Autoscaler(config, target, load, clock=lambda: now[0]), now


def run_ticks(autoscaler: Autoscaler, now: list[float], seconds: float, step: float = 1.0) -> None:
    async def go() -> None:
        end = now[0] + seconds
        while now[0] < end:
            await autoscaler.tick()
            now[0] += step

    asyncio.run(go())


def test_missing_data_holds_the_count_and_says_why() -> None:
    target = Target(a=4)
    autoscaler, now = make(target, Load(a=None), "a")
    run_ticks(autoscaler, now, 30)
    assert target.scale_calls == [] and target.counts["a"] == 4
    assert "hold: no data (Prometheus query failed" in autoscaler.status()["a"].last
    assert autoscaler.registry.get_sample_value(
        "stack_autoscaler_decisions_total", {"api": "a", "direction": "hold", "rule": "no_data"}
    ) == pytest.approx(30)
    assert math.isnan(autoscaler.registry.get_sample_value("stack_autoscaler_in_flight_requests", {"api": "a"}))


def test_a_failing_scaler_is_retried_with_back_off() -> None:
    target = Target(a=1)
    target.fail_scale = [RuntimeError("engine said no"), RuntimeError("engine said no again")]
    autoscaler, now = make(target, Load(a=3.0), "a")
    run_ticks(autoscaler, now, 1)
    assert target.scale_calls == [("a", 2)]  # panic would double; at least +1 from 1
    [failed] = autoscaler.status()["a"].changes
    assert failed.applied is False and failed.error == "engine said no"
    run_ticks(autoscaler, now, 1)  # t+1: inside the first back-off (2 s), no call
    assert len(target.scale_calls) == 1
    run_ticks(autoscaler, now, 1)  # t+2: the second try fails too
    assert len(target.scale_calls) == 2
    run_ticks(autoscaler, now, 3)  # t+3..t+5: inside the second back-off (4 s)
    assert len(target.scale_calls) == 2
    run_ticks(autoscaler, now, 1)  # t+6
    assert len(target.scale_calls) == 3 and target.counts["a"] == 2
    [change] = autoscaler.status()["a"].changes  # one change, applied at the third attempt
    assert change.applied is True and change.attempts == 3
    assert autoscaler.registry.get_sample_value("stack_autoscaler_scale_errors_total", {"api": "a"}) == 2


def test_a_busy_target_is_retried_next_tick_without_back_off() -> None:
    target = Target(a=1)
    target.fail_scale = [ScalerBusy("deployment in progress")]
    autoscaler, now = make(target, Load(a=3.0), "a")
    run_ticks(autoscaler, now, 2)
    assert target.scale_calls == [("a", 2), ("a", 2)] and target.counts["a"] == 2


def test_a_rolling_update_holds_the_count() -> None:
    target = Target(a=2)
    target.busy = "rolling update in progress (versions v1, v2)"
    autoscaler, now = make(target, Load(a=9.0), "a")
    run_ticks(autoscaler, now, 5)
    assert target.scale_calls == []
    assert autoscaler.status()["a"].last == "hold: rolling update in progress (versions v1, v2)"


@pytest.mark.parametrize(
    "fault",
    [
        "read-replicas",
        "read-signal",
    ],
)
def test_one_api_failing_never_stops_the_loop_or_the_other_apis(fault: str) -> None:
    target = Target(a=1, b=1)
    load = Load(a=3.0, b=3.0)
    if fault == "read-signal":
        load.in_flight["a"] = ValueError("malformed answer")
    autoscaler, now = make(target, load, "a", "b")
    if fault == "read-replicas":
        # Every API's read fails at first; then the target recovers.
        target.fail_read = ConnectionError("docker socket gone")
        run_ticks(autoscaler, now, 3)
        assert target.scale_calls == []
        target.fail_read = None
        run_ticks(autoscaler, now, 30)
        assert target.counts == {"a": 3, "b": 3}
        return
    run_ticks(autoscaler, now, 30)
    assert target.counts == {"a": 1, "b": 3}


def test_min_and_max_hold_whatever_the_signal_says() -> None:
    target = Target(a=1, b=5)
    autoscaler, now = make(target, Load(a=1000.0, b=0.0), "a", "b")
    run_ticks(autoscaler, now, 60)
    assert target.counts == {"a": 5, "b": 1}
    assert all(1 <= count <= 5 for _, count in target.scale_calls)


def test_an_api_set_by_hand_is_left_alone() -> None:
    target = Target(a=3)
    config = AutoscalerConfig("shop", 1.0, [ApiScaling("a", BOUNDS)])
    autoscaler = Autoscaler(config, target, Load(a=0.0), manual=lambda api: api == "a")
    asyncio.run(autoscaler.tick())
    assert target.scale_calls == [] and "stack scale --force" in autoscaler.status()["a"].last


def test_new_bounds_keep_the_history() -> None:
    target = Target(a=1)
    autoscaler, now = make(target, Load(a=4.0), "a")
    run_ticks(autoscaler, now, 20)
    history = autoscaler.apis["a"].history
    autoscaler.configure(AutoscalerConfig("shop", 1.0, [ApiScaling("a", Bounds(1, 2, 1.0))]))
    assert autoscaler.apis["a"].history is history and autoscaler.apis["a"].spec.bounds.max_replicas == 2


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool comes with Debian's prometheus package")
def test_metrics_pass_promtool() -> None:
    target = Target(a=1)
    autoscaler, now = make(target, Load(a=3.0), "a")
    run_ticks(autoscaler, now, 3)
    text = generate_latest(autoscaler.registry)
    for name in (
        "stack_autoscaler_desired_replicas",
        "stack_autoscaler_current_replicas",
        "stack_autoscaler_ready_replicas",
        "stack_autoscaler_decisions_total",
    ):
        assert name.encode() in text
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_restarted_autoscaler_keeps_its_stabilization_window(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A spike took the API up; the load is gone. Downscale stabilization (60 s) holds the count for a
    minute after the spike, counted from the spike, not from an autoscaler restart in between."""
    bounds = Bounds(1, 5, 1.0, window=6, upscale_stabilization=0, downscale_stabilization=60)
    state = tmp_path / "decisions.json"
    config = AutoscalerConfig("shop", 1.0, [ApiScaling("a", bounds)])
    target = Target(a=1)
    load = Load(a=4.0)
    before = [1000.0]
    first = Autoscaler(config, target, load, state_file=state, clock=lambda: before[0])
    asyncio.run(first.tick())
    spiked = target.counts["a"]
    assert spiked > 1
    load.in_flight["a"] = 0.0
    before[0] += 10
    asyncio.run(first.tick())
    assert target.counts["a"] == spiked  # held by the window, which starts now

    # A new process: its monotonic clock starts elsewhere; the saved times are wall-clock.
    after = [50.0]
    restarted = Autoscaler(config, target, load, state_file=state, clock=lambda: after[0])
    assert [c.desired for c in restarted.apis["a"].changes] == [spiked]
    asyncio.run(restarted.tick())
    assert target.counts["a"] == spiked
    after[0] += 61  # the window has passed since it started, so the restarted autoscaler scales down
    asyncio.run(restarted.tick())
    assert target.counts["a"] < spiked, restarted.status()["a"].last

    # Without the saved state, a restart would have held a whole new minute: the test can fail.
    target.counts["a"] = spiked
    forgetful = Autoscaler(config, target, load, clock=lambda: after[0])
    asyncio.run(forgetful.tick())
    assert target.counts["a"] == spiked and "just started" in forgetful.status()["a"].last


def test_an_unreadable_saved_state_starts_afresh(tmp_path) -> None:  # type: ignore[no-untyped-def]
    state = tmp_path / "decisions.json"
    state.write_text('{"a": {"history": {"recommendations": [["x", "y"]]}, "changes": [{"bogus": 1}]}}')
    config = AutoscalerConfig("shop", 1.0, [ApiScaling("a", BOUNDS)])
    autoscaler = Autoscaler(config, Target(a=1), Load(a=1.0), state_file=state)
    assert not autoscaler.apis["a"].history.recommendations and not autoscaler.apis["a"].changes
    state.write_text("{trunc")
    assert Autoscaler(config, Target(a=1), Load(a=1.0), state_file=state).apis["a"].changes.maxlen


def test_a_gpu_api_at_its_slots_says_it_is_at_gpu_capacity() -> None:
    target = Target(vision=2)
    bounded = Bounds(min_replicas=1, max_replicas=2, target=1.0, window=6, upscale_stabilization=0)
    config = AutoscalerConfig("shop", 1.0, [ApiScaling("vision", bounded, gpu_slots=[["GPU-a"], ["GPU-b"]])])
    autoscaler = Autoscaler(config, target, Load(vision=9.0), clock=lambda: 1000.0)
    asyncio.run(autoscaler.tick())
    assert target.scale_calls == []  # never a slot that has no place
    assert autoscaler.status()["vision"].last.endswith("; at GPU capacity (2/2 slots)")


def test_gpu_utilization_grows_an_api_whose_queue_looks_fine() -> None:
    class Busy(Load):
        async def read(self, api: str, window: float, short_window: float) -> Signal:
            return Signal(1.0, 1.0, gpu_utilization=0.9)  # one request in flight, the GPU 90% busy

    bounds = Bounds(min_replicas=1, max_replicas=8, target=4.0, window=6, upscale_stabilization=0)
    gpu_bound = Bounds(**{**bounds.__dict__, "target_gpu_utilization": 0.6})
    for given, expected in ((bounds, []), (gpu_bound, [("vision", 3)])):
        target = Target(vision=2)
        config = AutoscalerConfig("shop", 1.0, [ApiScaling("vision", given)])
        autoscaler = Autoscaler(config, target, Busy(), clock=lambda: 1000.0)
        asyncio.run(autoscaler.tick())
        assert target.scale_calls == expected  # 2 replicas x 90% / 60% = 3
    assert "GPU utilization 90%, target 60%" in autoscaler.status()["vision"].last
