"""Back-pressure, timeouts, limits, disconnects, draining, metrics."""

from __future__ import annotations

import concurrent.futures
import contextlib
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests
from common import PREDICTORS, ServerFactory, require_binary
from waits import until


def _parallel(count: int, call) -> list:
    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda i: call(i), range(count)))


def test_overload_answers_503_with_retry_after(inproc) -> None:
    server = inproc(PREDICTORS / "gated.py", predictor_class="AsyncPredictor", max_concurrency=4)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        held = [pool.submit(server.post, json={"n": i}) for i in range(4)]
        until(lambda: server.instance.started == 4, "four requests in predict")
        rejected = [server.post(json={"n": 9}) for _ in range(6)]  # every slot is taken: answered at once
        server.instance.release.set()
        assert [f.result().status_code for f in held] == [200] * 4
    assert {r.status_code for r in rejected} == {503}
    assert rejected[0].json()["error"] == "replica is at max_concurrency (4 requests); retry later"
    # Nothing finished yet, so no throughput to estimate from: retry in a second.
    assert rejected[0].headers["Retry-After"] == "1"
    assert server.instance.started == 4  # a rejected request never reached predict


def test_retry_after_is_the_backlog_over_recent_throughput() -> None:
    from serving.app import Replica
    from serving.config import ServingConfig

    replica = Replica(ServingConfig(predictor_path="unused.py", api="retry"))
    path = replica.predictions  # the predict path keeps the numbers Retry-After comes from
    throughput = path._throughput
    now = time.monotonic()
    throughput._started = now - 20
    throughput._completions.extend([now - 5 + i for i in range(5)])  # 5 done in the last 10 s: 0.5/s
    path.in_flight = 4
    assert replica.retry_after() == 8  # 4 waiting / 0.5 per second
    path.in_flight = 1000
    assert replica.retry_after() == 60  # never more than a minute
    throughput._completions.clear()
    throughput._mean_duration = 2.0
    path.in_flight = 3
    assert replica.retry_after() == 6  # no recent completions: in flight x mean duration / threads


def test_timeout_is_504(inproc) -> None:
    server = inproc(PREDICTORS / "gated.py", predictor_class="AsyncPredictor", timeout=0.3)
    response = server.post(json={"n": 1}, headers={"X-Request-ID": "slow"})  # never released: always too slow
    assert response.status_code == 504
    assert response.json() == {"error": "prediction took longer than the timeout of 0.3s", "request_id": "slow"}
    server.instance.release.set()
    assert server.post(json={"n": 2}).status_code == 200


def test_body_over_limit_is_413(inproc) -> None:
    server = inproc(PREDICTORS / "contract.py", max_body_size=1000)
    big = server.post(data=b"x" * 2000, headers={"Content-Type": "application/octet-stream"})
    assert big.status_code == 413
    assert big.json()["error"] == "request body of 2000 bytes exceeds max_body_size of 1000 bytes"

    # multipart sent chunked (no Content-Length): aiohttp itself would not stop it.
    def chunks():
        yield b'--b\r\nContent-Disposition: form-data; name="f"; filename="a.bin"\r\n\r\n'
        for _ in range(10):
            yield b"y" * 500
        yield b"\r\n--b--\r\n"

    chunked = server.post(data=chunks(), headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert chunked.status_code == 413
    assert "exceeds max_body_size of 1000 bytes" in chunked.json()["error"]
    assert server.post(data=b"x" * 10, headers={"Content-Type": "application/octet-stream"}).status_code == 200


def test_disconnected_client_is_dropped_before_predict(inproc) -> None:
    server = inproc(PREDICTORS / "gated.py", threads_per_process=1)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        busy = pool.submit(server.post, json={"id": "first"})
        until(lambda: server.instance.started == 1, "the first request to hold the only thread")
        # A raw client that queues behind the busy thread and hangs up.
        body = b'{"id": "gone"}'
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            until(lambda: server.replica.in_flight == 2, "the second request to be queued")
        until(lambda: server.hung_up() == 1, "the server to see the second client hang up")
        server.instance.release.set()
        assert busy.result().status_code == 200
    until(lambda: server.replica.in_flight == 0, "the queue to empty")
    assert server.instance.calls == [{"id": "first"}]
    assert 'predictor_requests_total{api="test",code="499"} 1.0' in server.get("/metrics").text


def test_sigterm_drains_in_flight_requests(servers: ServerFactory) -> None:
    # A real process: signals, the drain and the exit code are what this tests.
    server = servers.serving(PREDICTORS / "contract.py", drain_delay=3.0, threads_per_process=4, grace_period=20)
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        slow = [pool.submit(server.post, params={"reply": "sleep", "seconds": "2"}) for _ in range(3)]
        stream = pool.submit(server.post, params={"reply": "slow-stream", "seconds": "2"})
        until(lambda: server.get("/").json()["in_flight"] == 4, "four requests in flight")
        server.proc.send_signal(signal.SIGTERM)
        until(lambda: server.get("/readyz").status_code == 503, "readiness to turn 503")
        assert server.post(json={}).status_code == 200  # still accepting during the drain delay
        assert all(f.result().status_code == 200 for f in slow)
        assert [line for line in stream.result().text.splitlines()] == [f'{{"part": {i}}}' for i in range(4)]
    assert server.wait_exit() == 0
    assert "draining: readiness is 503" in server.logs()


def test_multiple_processes_share_port_and_metrics(servers: ServerFactory) -> None:
    server = servers.serving(PREDICTORS / "contract.py", processes_per_replica=2, api="multi")
    pids = {server.get("/").json()["pid"] for _ in range(40)}
    assert len(pids) == 2  # SO_REUSEPORT spread the connections
    for _ in range(20):
        assert server.post(json={}).status_code == 200
    text = server.get("/metrics").text
    assert 'predictor_requests_total{api="multi",code="200"} 20.0' in text
    assert 'predictor_ready{api="multi"} 1.0' in text
    assert server.stop() == 0


def test_crashed_worker_is_replaced(servers: ServerFactory) -> None:
    server = servers.serving(PREDICTORS / "contract.py", processes_per_replica=2)
    pid = server.get("/").json()["pid"]
    subprocess.run(["kill", "-9", str(pid)], check=True)
    seen: set[int] = set()

    def two_new_workers() -> bool:
        with contextlib.suppress(requests.RequestException):
            seen.add(server.get("/").json()["pid"])
        return len(seen - {pid}) == 2

    until(two_new_workers, lambda: f"two live workers besides the killed one; saw {seen}; logs:\n{server.logs()}")
    assert f"worker {pid} exited with code -9; starting a new one" in server.logs()


def test_metrics_names_and_promtool(servers: ServerFactory, tmp_path: Path) -> None:
    server = servers.serving(PREDICTORS / "contract.py", api="iris")
    server.post(json={})
    server.post(params={"reply": "fail"})
    text = server.get("/metrics").text
    for name in (
        "predictor_requests_total",
        "predictor_request_duration_seconds_bucket",
        "predictor_requests_in_flight",
        "predictor_queue_length",
        "predictor_ready",
    ):
        assert re.search(rf'^{name}{{api="iris"', text, re.M), name
    assert 'predictor_requests_total{api="iris",code="500"} 1.0' in text
    _promtool(text)


@pytest.mark.parametrize("processes", [1, 2])
def test_promtool_accepts_metrics(servers: ServerFactory, processes: int) -> None:
    server = servers.serving(
        PREDICTORS / "batch.py", processes_per_replica=processes, batching={"max_batch_size": 4, "batch_interval": 0.01}
    )
    server.post(json={"a": 1})
    text = server.get("/metrics").text
    assert "predictor_batch_size_bucket" in text
    _promtool(text)


def _promtool(text: str) -> None:
    promtool = require_binary("promtool")
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_in_flight_gauge_counts_queued_requests(inproc) -> None:
    server = inproc(PREDICTORS / "gated.py", threads_per_process=1)
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(server.post, json={"n": i}) for i in range(3)]
        until(lambda: server.replica.in_flight == 3, "three requests in flight")
        text = server.get("/metrics").text
        server.instance.release.set()
        assert all(f.result().status_code == 200 for f in futures)
    assert 'predictor_requests_in_flight{api="test"} 3.0' in text
    assert 'predictor_queue_length{api="test"} 2.0' in text
