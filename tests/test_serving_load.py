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

from conftest import PREDICTORS, Server, ServerFactory


def _parallel(count: int, call) -> list:
    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda i: call(i), range(count)))


def test_overload_answers_503_with_computed_retry_after(servers: ServerFactory) -> None:
    server = servers.serving(PREDICTORS / "async_sleep.py", max_concurrency=4)

    def call(i: int) -> requests.Response:
        time.sleep(0.2 if i >= 4 else 0)  # the first four take every slot
        return server.post(json={"seconds": 1.5})

    responses = _parallel(10, call)
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 4 + [503] * 6
    rejected = next(r for r in responses if r.status_code == 503)
    assert rejected.json()["error"] == "replica is at max_concurrency (4 requests); retry later"
    # No completions yet: estimated from the mean duration seen so far (none), so 1s;
    # the next overload, after four 1.5s requests, estimates from throughput instead.
    assert rejected.headers["Retry-After"] == "1"

    responses = _parallel(8, lambda i: (time.sleep(0.2 * (i >= 4)), server.post(json={"seconds": 4}))[1])
    later = [r for r in responses if r.status_code == 503]
    assert later and all(int(r.headers["Retry-After"]) >= 2 for r in later), [r.headers for r in later]


def test_timeout_is_504(servers: ServerFactory) -> None:
    server = servers.serving(PREDICTORS / "async_sleep.py", timeout=0.3)
    response = server.post(json={"seconds": 2}, headers={"X-Request-ID": "slow"})
    assert response.status_code == 504
    assert response.json() == {"error": "prediction took longer than the timeout of 0.3s", "request_id": "slow"}
    assert server.post(json={"seconds": 0.01}).status_code == 200


def test_body_over_limit_is_413(servers: ServerFactory) -> None:
    server = servers.serving(PREDICTORS / "contract.py", max_body_size=1000)
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


def test_disconnected_client_is_dropped_before_predict(servers: ServerFactory, tmp_path: Path) -> None:
    calls = tmp_path / "calls.txt"
    server = servers.serving(PREDICTORS / "counting.py", config={"calls_file": str(calls)}, threads_per_process=1)
    busy = concurrent.futures.ThreadPoolExecutor(1).submit(server.post, json={"id": "first", "seconds": 1.5})
    time.sleep(0.3)
    # A raw client that queues behind the busy thread and hangs up.
    body = b'{"id": "gone", "seconds": 0}'
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        time.sleep(0.3)
    assert busy.result().status_code == 200
    time.sleep(0.5)
    assert calls.read_text().split() == ["first"]
    assert "status=499" in server.logs()


def test_sigterm_drains_in_flight_requests(servers: ServerFactory) -> None:
    server = servers.serving(PREDICTORS / "contract.py", drain_delay=1.0, threads_per_process=4, grace_period=20)
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        slow = [pool.submit(server.post, params={"reply": "sleep", "seconds": "2"}) for _ in range(3)]
        stream = pool.submit(server.post, params={"reply": "slow-stream", "seconds": "2"})
        time.sleep(0.3)
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        assert server.get("/readyz").status_code == 503  # readiness flips at once
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
    deadline = time.monotonic() + 20
    seen: set[int] = set()
    while time.monotonic() < deadline and len(seen - {pid}) < 2:
        with contextlib.suppress(requests.RequestException):
            seen.add(server.get("/").json()["pid"])
        time.sleep(0.05)
    assert len(seen - {pid}) == 2, server.logs()
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
    result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_in_flight_gauge_counts_queued_requests(servers: ServerFactory) -> None:
    server: Server = servers.serving(PREDICTORS / "contract.py", threads_per_process=1)
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(server.post, params={"reply": "sleep", "seconds": "1"}) for _ in range(3)]
        time.sleep(0.4)
        text = server.get("/metrics").text
        assert 'predictor_requests_in_flight{api="test"} 3.0' in text
        assert 'predictor_queue_length{api="test"} 2.0' in text
        assert all(f.result().status_code == 200 for f in futures)
