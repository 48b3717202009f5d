"""Automated canaries: the judgement, the weights, the counters it reads and the runner, without a stack."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import pytest

from stack.control.canary import (
    PROGRESSING,
    PROMOTED,
    ROLLED_BACK,
    STATE_FILE,
    STOPPED,
    CanaryRunner,
    judge,
    splitter_status,
    start,
)
from stack.control.canary_sources import Counters, Measurement, NoData, measure, quantile
from stack.splits import CanaryConfig, SplitterConfig, applied, weights_at

ECHO = "class Predictor:\n    def predict(self, payload):\n        return payload\n"
CONFIG = CanaryConfig("v2", (5, 25, 50, 100), 60.0, 0.01, 1.5, 0.05, 50, "rev1")


def test_weights_give_the_canary_its_step_and_the_baseline_the_rest_in_proportion() -> None:
    assert weights_at([("v1", 90), ("v2", 10)], "v2", 25) == {"v1": 75, "v2": 25}
    assert weights_at([("v1", 90), ("v2", 10)], "v2", 0) == {"v1": 100, "v2": 0}
    assert weights_at([("v1", 90), ("v2", 10)], "v2", 100) == {"v1": 0, "v2": 100}
    three = weights_at([("a", 2), ("canary", 0), ("b", 1)], "canary", 5)
    assert three == {"a": 63, "canary": 5, "b": 32} and sum(three.values()) == 100
    # A baseline the file gives no weight still gets the traffic the canary does not.
    assert weights_at([("v1", 0), ("v2", 100)], "v2", 5) == {"v1": 95, "v2": 5}


def test_a_healthy_canary_advances_step_by_step_and_is_promoted_at_the_last() -> None:
    state = start("iris", CONFIG, 1000.0)
    assert state.phase == PROGRESSING and state.weight(CONFIG) == 5
    healthy = Measurement(400, 1, 0.020, 0.018)
    for now, weight in ((1060.0, 25), (1120.0, 50)):
        decision = judge(CONFIG, state, healthy, now)
        assert decision.action == "advance" and decision.weight == weight and state.step_started == now
        assert "error rate 0.25% over 400 requests, p99 ratio 1.00" in decision.reason  # both under the floor
    decision = judge(CONFIG, state, healthy, 1180.0)
    assert decision.action == "promote" and state.phase == PROMOTED and state.weight(CONFIG) == 100
    assert [d.action for d in state.decisions] == ["start", "advance", "advance", "promote"]


def test_the_first_breach_rolls_back_to_zero_with_its_numbers() -> None:
    state = start("iris", CONFIG, 0.0)
    decision = judge(CONFIG, state, Measurement(500, 50, 0.01, 0.01), 60.0)
    assert decision.action == "rollback" and decision.weight == 0 and state.phase == ROLLED_BACK
    assert state.weight(CONFIG) == 0
    assert decision.requests == 500 and decision.error_rate == 0.1
    assert "error rate 10% > max_error_rate 1% (50 of 500 requests at 5%)" in decision.reason
    slow = start("iris", CONFIG, 0.0)
    decision = judge(CONFIG, slow, Measurement(500, 0, 0.300, 0.100), 60.0)
    assert decision.action == "rollback" and decision.latency_ratio == 3.0 and "p99 300.0ms is 3.00x" in decision.reason


def test_too_little_data_holds_the_step_and_starts_it_over() -> None:
    state = start("iris", CONFIG, 0.0)
    first = judge(CONFIG, state, Measurement(12, 12, 0.01, 0.01), 60.0)  # all errors, but only 12 requests
    assert first.action == "hold" and state.phase == PROGRESSING and state.step == 0 and state.step_started == 60.0
    assert "12 requests < min_requests 50" in first.reason
    judge(CONFIG, state, Measurement(3, 0, 0.01, 0.01), 120.0)
    assert state.decisions[-1].count == 2 and len(state.decisions) == 2  # the same hold, counted
    missing = judge(CONFIG, state, NoData("Prometheus query failed: refused"), 180.0)
    assert missing.action == "hold" and "no data (Prometheus query failed: refused)" in missing.reason
    no_latency = judge(CONFIG, state, Measurement(100, 0, None, 0.01), 240.0)
    assert no_latency.action == "hold" and state.phase == PROGRESSING
    unchecked = CanaryConfig("v2", (5, 100), 60.0, 0.01, None, 0.05, 50)
    assert judge(unchecked, start("iris", unchecked, 0), Measurement(100, 0, None, None), 60).action == "promote"


def test_one_step_is_a_plain_switch() -> None:
    config = CanaryConfig("v2", (100,), 60.0, 0.01, 1.5, 0.05, 50)
    assert start("iris", config, 0.0).phase == PROMOTED


def test_counters_between_two_snapshots_count_new_series_and_restarts() -> None:
    bounds = (0.01, 0.1, math.inf)
    before = Counters(
        {("v2", "r1", "200"): 100, ("v1", "r0", "200"): 1000},
        {("v2", "r1", b): c for b, c in zip(bounds, (90, 100, 100), strict=True)},
    )
    after = Counters(
        {
            ("v2", "r1", "200"): 150,  # +50
            ("v2", "r1", "500"): 5,  # a series born since: +5
            ("v2", "r2", "200"): 45,  # a replica that started since: +45
            ("v1", "r0", "200"): 1200,
        },
        {
            **{("v2", "r1", b): c for b, c in zip(bounds, (120, 155, 155), strict=True)},
            **{("v2", "r2", b): c for b, c in zip(bounds, (40, 45, 45), strict=True)},
            **{("v1", "r0", b): c for b, c in zip(bounds, (200, 200, 200), strict=True)},  # restarted: from 0
        },
    )
    m = measure(before, after, "v2", ["v1"])
    assert (m.requests, m.errors) == (100, 5) and m.error_rate == 0.05
    # 70 of 100 under 10 ms, all under 100 ms; the quantile leaving out the slowest of 100 is p99.
    assert m.canary_p99 == pytest.approx(0.01 + 0.09 * (99 - 70) / 30)
    assert m.baseline_p99 == pytest.approx(0.01 * 0.99)


def test_quantile_matches_prometheus_histogram_quantile() -> None:
    buckets = {0.1: 50.0, 0.5: 90.0, 1.0: 100.0, math.inf: 100.0}
    assert quantile(0.5, buckets) == pytest.approx(0.1)
    assert quantile(0.7, buckets) == pytest.approx(0.3)
    assert quantile(0.99, {0.1: 10.0, math.inf: 20.0}) == 0.1  # past the last finite bound: that bound
    assert quantile(0.99, {0.1: 0.0, math.inf: 0.0}) is None
    assert quantile(0.99, {0.1: 5.0}) is None  # no +Inf bucket: not a histogram


class FakeSource:
    """Counters that grow as a test says; a gateway that sends what it is told."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str], float] = {}
        self.buckets: dict[tuple[str, str, float], float] = {}
        self.sent: dict[str, float] = {}
        self.down = False

    def serve(self, api: str, ok: int, errors: int = 0, seconds: float = 0.005) -> None:
        for code, count in (("200", ok), ("500", errors)):
            key = (api, "r", code)
            self.requests[key] = self.requests.get(key, 0) + count
        for bound in (0.01, 0.1, math.inf):
            key2 = (api, "r", bound)
            self.buckets[key2] = self.buckets.get(key2, 0) + (ok + errors if seconds <= bound else 0)

    async def counters(self, apis: list[str]) -> Counters | NoData:
        if self.down:
            return NoData("Prometheus query failed: connection refused")
        return Counters(
            {k: v for k, v in self.requests.items() if k[0] in apis},
            {k: v for k, v in self.buckets.items() if k[0] in apis},
        )

    async def gateway(self, services: list[str]) -> dict[str, float] | NoData:
        return {s: self.sent.get(s, 0.0) for s in services}


class Clock:
    def __init__(self) -> None:
        self.now = 10_000.0

    def __call__(self) -> float:
        return self.now


def splitter(revision: str = "rev1", steps: tuple[int, ...] = (10, 50, 100)) -> SplitterConfig:
    canary = CanaryConfig("v2", steps, 10.0, 0.01, 1.5, 0.05, 20, revision)
    return SplitterConfig("iris", "/iris", [("v1", 90), ("v2", 10)], canary=canary)


def test_the_runner_promotes_a_healthy_canary_and_the_routes_follow(tmp_path: Path) -> None:
    source, clock = FakeSource(), Clock()
    runner = CanaryRunner([splitter()], tmp_path, source, clock=clock)
    assert runner.weights() == {"iris": {"v1": 90, "v2": 10}}

    async def interval(ok: int, errors: int = 0) -> None:
        await runner.tick()  # takes the step's first counters, when it has none
        source.serve("v1", 300)
        source.serve("v2", ok, errors)
        clock.now += 10
        await runner.tick()

    asyncio.run(interval(40))
    assert runner.weights() == {"iris": {"v1": 50, "v2": 50}}
    split = applied("p", [splitter()], {}, runner.weights())[0]
    assert split.weights == (("p-v1", 50), ("p-v2", 50))
    asyncio.run(interval(200))
    assert runner.states["iris"].phase == PROMOTED and runner.weights() == {"iris": {"v1": 0, "v2": 100}}
    # `stack status` reads what the runner saved.
    status = splitter_status([splitter()], tmp_path)[0]
    assert status.weights == {"v1": 0, "v2": 100} and status.canary is not None
    assert status.canary.phase == PROMOTED and [d["action"] for d in status.canary.decisions][-1] == "promote"


def test_the_runner_rolls_back_a_failing_canary_at_its_first_judgement(tmp_path: Path) -> None:
    source, clock = FakeSource(), Clock()
    runner = CanaryRunner([splitter()], tmp_path, source, clock=clock)

    async def run() -> None:
        await runner.tick()
        source.serve("v2", 90, 10)  # 10% errors
        source.serve("v1", 900)
        clock.now += 10
        await runner.tick()

    asyncio.run(run())
    state = runner.states["iris"]
    assert state.phase == ROLLED_BACK and runner.weights() == {"iris": {"v1": 100, "v2": 0}}
    assert [d.action for d in state.decisions] == ["start", "rollback"]
    # A restart keeps it rolled back (same version); a new version of the canary starts over.
    again = CanaryRunner([splitter()], tmp_path, source, clock=clock)
    assert again.states["iris"].phase == ROLLED_BACK
    fresh = CanaryRunner([splitter("rev2")], tmp_path, source, clock=clock)
    assert fresh.states["iris"].phase == PROGRESSING and fresh.weights() == {"iris": {"v1": 90, "v2": 10}}


def test_the_gateway_gets_a_rollback_before_the_status_says_it_and_again_after_a_failed_send(
    tmp_path: Path,
) -> None:
    source, clock = FakeSource(), Clock()
    sent: list[tuple[dict[str, dict[str, int]], str | None]] = []
    failing = [True]

    async def on_change() -> None:
        # What `stack status` would read at the moment the gateway is sent the new weights.
        saved = splitter_status([splitter()], tmp_path)[0].canary
        sent.append((runner.weights(), saved.phase if saved else None))
        if failing[0]:
            failing[0] = False
            raise OSError("routes directory not writable")

    runner = CanaryRunner([splitter()], tmp_path, source, clock=clock, on_change=on_change)

    async def run() -> None:
        await runner.tick()
        source.serve("v2", 90, 10)
        source.serve("v1", 900)
        clock.now += 10
        await runner.tick()  # rolls back; the send fails
        await runner.tick()  # nothing new decided, yet the weights are sent again

    asyncio.run(run())
    rolled_back = {"iris": {"v1": 100, "v2": 0}}
    assert sent == [(rolled_back, PROGRESSING), (rolled_back, ROLLED_BACK)]
    assert splitter_status([splitter()], tmp_path)[0].canary.phase == ROLLED_BACK  # type: ignore[union-attr]


def test_missing_data_holds_and_stack_split_stops_the_canary(tmp_path: Path) -> None:
    source, clock = FakeSource(), Clock()
    overridden: set[str] = set()
    runner = CanaryRunner([splitter()], tmp_path, source, clock=clock, overridden=lambda: overridden)

    async def run() -> None:
        source.down = True
        await runner.tick()
        clock.now += 10
        await runner.tick()
        assert runner.states["iris"].decisions[-1].action == "hold"
        assert "connection refused" in runner.states["iris"].decisions[-1].reason
        source.down = False
        overridden.add("iris")
        await runner.tick()
        assert runner.states["iris"].phase == STOPPED and runner.weights() == {}
        overridden.clear()  # the next `stack up` dropped the hand-set weights
        await runner.tick()
        assert runner.states["iris"].phase == PROGRESSING and runner.states["iris"].step == 0

    asyncio.run(run())


def test_observed_shares_come_from_the_gateway_counters_of_the_last_minute(tmp_path: Path) -> None:
    source, clock = FakeSource(), Clock()
    services = {"v1": "p-split-iris--p-v1", "v2": "p-split-iris--p-v2"}
    runner = CanaryRunner([splitter()], tmp_path, source, clock=clock, services=lambda s: services)

    async def run() -> None:
        source.sent = {"p-split-iris--p-v1": 1000.0}  # before the window: not counted
        await runner.tick()
        source.sent = {"p-split-iris--p-v1": 1900.0, "p-split-iris--p-v2": 100.0}
        clock.now += 30
        await runner.tick()

    asyncio.run(run())
    assert runner.observed["iris"]["shares"] == {"v1": 0.9, "v2": 0.1}
    assert splitter_status([splitter()], tmp_path)[0].observed == {"v1": 0.9, "v2": 0.1}


def test_an_unreadable_state_file_starts_afresh(tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).write_text("{not json")
    runner = CanaryRunner([splitter()], tmp_path, FakeSource(), clock=Clock())
    assert runner.states["iris"].phase == PROGRESSING
    assert json.loads((tmp_path / STATE_FILE).read_text())["canaries"]["iris"]["phase"] == PROGRESSING
    (tmp_path / STATE_FILE).write_text(json.dumps({"canaries": {"iris": {"phase": "sideways"}}}))
    assert CanaryRunner([splitter()], tmp_path, FakeSource(), clock=Clock()).states["iris"].phase == PROGRESSING


def test_a_canary_is_not_judged_while_its_new_version_rolls_out(tmp_path: Path) -> None:
    source, clock = FakeSource(), Clock()
    rolling = {"v2"}

    def busy(api: str) -> str | None:
        return f"{api} is rolling out its new version" if api in rolling else None

    runner = CanaryRunner([splitter()], tmp_path, source, clock=clock, busy=busy)

    async def run() -> None:
        for _ in range(3):  # old replicas still answer, with errors: none of it counts
            await runner.tick()
            source.serve("v2", 0, 50)
            clock.now += 10
        await runner.tick()
        rolling.clear()
        await runner.tick()  # out: the step starts now, on the new version's counters
        source.serve("v1", 300)
        source.serve("v2", 40)
        clock.now += 10
        await runner.tick()

    asyncio.run(run())
    state = runner.states["iris"]
    assert [d.action for d in state.decisions] == ["start", "hold", "advance"], state.decisions
    assert "v2 is rolling out its new version" in state.decisions[1].reason and state.decisions[1].count == 1


def write_canary_spec(root: Path, canary: str) -> None:
    (root / "predictor.py").write_text(ECHO)
    (root / "stack.yaml").write_text(
        "project: c\napis:\n"
        "  - {name: v1, predictor: {path: predictor.py}}\n"
        "  - {name: v2, predictor: {path: predictor.py}}\n"
        "splitters:\n"
        "  - name: s\n"
        "    apis: [{name: v1, weight: 100}, {name: v2, weight: 0}]\n"
        f"    canary: {canary}\n"
    )


@pytest.mark.parametrize(
    ("canary", "message"),
    [
        ("{api: v3}", "splitters[0].canary.api: the canary 'v3' is not one of this splitter's APIs"),
        ("{api: v2, steps: [50, 10]}", "splitters[0].canary.steps: steps must rise, like [5, 25, 50, 100]"),
        ("{api: v2, steps: [0, 100]}", "splitters[0].canary.steps[0]"),
        ("{api: v2, max_error_rate: 5}", "max_error_rate: expected a percentage like 1% (or a fraction from 0 to 1)"),
        ("{api: v2, max_error_rate: '150%'}", "expected a percentage from 0% to 100%"),
        ("{api: v2, interval: 2s}", "interval 2s is shorter than one scrape (prometheus.scrape_interval is 5s)"),
        ("{api: v2, min_request: 3}", "unknown field `min_request` — did you mean `min_requests`?"),
    ],
)
def test_canary_mistakes_are_spec_errors_with_their_place(tmp_path: Path, canary: str, message: str) -> None:
    from stack.spec import SpecError, load_spec

    write_canary_spec(tmp_path, canary)
    with pytest.raises(SpecError) as problem:
        load_spec(tmp_path)
    assert message in str(problem.value) and "stack.yaml:8:" in str(problem.value), str(problem.value)


def test_a_canary_block_reads_its_units(tmp_path: Path) -> None:
    from stack.spec import load_spec

    write_canary_spec(tmp_path, "{api: v2, interval: 1m30s, max_error_rate: 0.5%, max_latency_ratio: null}")
    canary = load_spec(tmp_path).spec.splitters[0].canary
    assert canary is not None
    assert (canary.interval, canary.max_error_rate, canary.max_latency_ratio) == (90.0, 0.005, None)
    assert canary.steps == [5, 25, 50, 100] and canary.min_requests == 50
