"""Named keys' priorities in one replica (gateway.keys): queued requests are taken highest priority first, and
a full replica refuses the newest lowest-priority waiting request, never a higher one."""

from __future__ import annotations

import concurrent.futures
import json
from pathlib import Path

from waits import until

PREDICTOR = """
import threading


class Predictor:
    def __init__(self, config):
        self.gate = threading.Event()
        self.order = []

    def predict(self, payload):
        if payload.get("hold"):
            self.gate.wait(30)
        self.order.append(payload["n"])
        return {"n": payload["n"]}
"""
HIGH, LOW = "high-key-0123456789abcdef", "low-key-0123456789abcdef"


def _keys(path: Path) -> str:
    lines = [
        {"name": "interactive", "key": HIGH, "priority": "high"},
        {"name": "batch", "key": LOW, "priority": "low"},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return str(path)


def test_high_goes_first_and_a_full_replica_refuses_the_newest_low(inproc, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "p.py").write_text(PREDICTOR)
    server = inproc(tmp_path / "p.py", api_keys_file=_keys(tmp_path / "keys"), priorities=True, max_concurrency=3)

    def post(key: str, n: int, hold: bool = False):  # type: ignore[no-untyped-def]
        return server.post(json={"n": n, "hold": hold}, headers={"Authorization": f"Bearer {key}"})

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        running = pool.submit(post, LOW, 0, True)  # holds the only thread
        until(lambda: server.replica.predictions.in_flight == 1, "the first request running")
        first_low = pool.submit(post, LOW, 1)
        until(lambda: server.replica.predictions.queued() == 1, "one low request queued")
        second_low = pool.submit(post, LOW, 2)
        until(lambda: server.replica.predictions.queued() == 2, "two low requests queued")
        high = pool.submit(post, HIGH, 3)  # the replica is full (max_concurrency 3)
        refused = second_low.result()
        assert refused.status_code == 503 and "higher priority" in refused.json()["error"]
        assert int(refused.headers["Retry-After"]) >= 1
        until(lambda: server.replica.predictions.queued() == 2, "the high request queued in its place")
        server.instance.gate.set()
        assert [f.result().status_code for f in (running, first_low, high)] == [200, 200, 200]
    assert server.instance.order == [0, 3, 1]  # the high one before the low one that came first
    metrics = server.get("/metrics").text
    assert 'stack_key_requests_total{api="test",code="503",key="batch"} 1.0' in metrics
    assert 'stack_key_requests_total{api="test",code="200",key="interactive"} 1.0' in metrics
    assert HIGH not in metrics and LOW not in metrics


BATCH_PREDICTOR = """
import threading


class Predictor:
    def __init__(self, config):
        self.gate = threading.Event()
        self.batches = []

    def predict(self, payload):
        if any(p.get("hold") for p in payload):
            self.gate.wait(30)
        self.batches.append([p["n"] for p in payload])
        return [{"n": p["n"]} for p in payload]
"""


def test_batches_take_the_highest_priority_first(inproc, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "p.py").write_text(BATCH_PREDICTOR)
    server = inproc(
        tmp_path / "p.py",
        api_keys_file=_keys(tmp_path / "keys"),
        priorities=True,
        batching={"max_batch_size": 2, "batch_interval": 30.0, "max_in_flight": 1},
    )

    def post(key: str, n: int, hold: bool = False):  # type: ignore[no-untyped-def]
        return server.post(json={"n": n, "hold": hold}, headers={"Authorization": f"Bearer {key}"})

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        running = [pool.submit(post, LOW, n, True) for n in (0, 1)]  # the first batch, held
        until(lambda: server.instance.gate is not None and server.replica.predictions.in_flight == 2, "held")
        waiting = [pool.submit(post, LOW, n) for n in (2, 3)]
        until(lambda: server.replica.predictions.in_flight == 4, "two low requests waiting")
        urgent = [pool.submit(post, HIGH, n) for n in (4, 5)]
        until(lambda: server.replica.predictions.in_flight == 6, "two high requests waiting")
        server.instance.gate.set()
        assert all(f.result().status_code == 200 for f in running + waiting + urgent)
    assert [sorted(b) for b in server.instance.batches] == [[0, 1], [4, 5], [2, 3]]
