"""A replica notices when it is stuck or unhealthy (serving.health), says so on /healthz, and answers
the requests it holds instead of leaving them to hang; its API keys follow the keys file (serving.keys)."""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from common import PREDICTORS
from waits import until

import serving.health
from serving.config import ServingConfig
from serving.health import EXIT_STUCK

WEDGED = PREDICTORS / "wedged.py"
CHECKED = PREDICTORS / "health_checked.py"


@pytest.fixture(autouse=True)
def quick_linger(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serving.health, "LINGER", 0.5)


def _send(pool: concurrent.futures.ThreadPoolExecutor, url: str, rid: str) -> concurrent.futures.Future[Any]:
    return pool.submit(requests.post, url, json=rid, headers={"X-Request-ID": rid}, timeout=60)


def test_a_wedged_sync_predict_answers_what_it_holds_with_504_and_says_stuck(inproc: Any) -> None:
    replica = inproc(WEDGED, config={"fine": 1}, stuck_after=1.0)
    try:
        assert replica.post(json="first").status_code == 200
        health = replica.get("/healthz")
        assert health.status_code == 200 and health.json() == {"status": "alive", "ready": True, "keys": ""}
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            # The second request wedges the one predictor thread; the third queues behind it.
            wedged = _send(pool, replica.url, "wedged-1")
            until(lambda: replica.instance.calls == 2, "the wedging request to start")
            queued = _send(pool, replica.url, "queued-1")
            answers = [wedged.result(30), queued.result(30)]
        for answer, rid in zip(answers, ["wedged-1", "queued-1"], strict=True):
            assert answer.status_code == 504
            body = answer.json()
            assert body["request_id"] == rid and "stuck" in body["error"] and "predict running for" in body["error"]
        health = replica.get("/healthz")
        assert health.status_code == 503
        assert health.json()["status"] == "stuck" and "stuck_after 1s" in health.json()["reason"]
        assert replica.get("/readyz").status_code == 503
        refused = replica.post(json="late")
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
        assert "being replaced" in refused.json()["error"]
        # Nobody replaced it (no controller here): it leaves by itself.
        until(lambda: replica.exits, "the stuck replica to exit")
        assert "predict running for" in replica.exits[0]
    finally:
        replica.instance.release.set()


def test_a_timeout_answers_504_and_the_wedged_thread_still_makes_the_replica_stuck(inproc: Any) -> None:
    replica = inproc(WEDGED, config={"fine": 0}, timeout=0.3, stuck_after=1.5)
    try:
        first = replica.post(json="a")
        assert first.status_code == 504 and "timeout" in first.json()["error"]
        # The thread is still wedged: later requests wait behind it and time out too...
        assert replica.post(json="b").status_code == 504
        # ...until the replica finds the predict stuck.
        until(lambda: replica.get("/healthz").status_code == 503, "the replica to find itself stuck")
        assert "predict running for" in replica.get("/healthz").json()["reason"]
    finally:
        replica.instance.release.set()


def test_a_replica_whose_every_thread_is_wedged_past_its_timeout_is_not_ready(inproc: Any) -> None:
    """Before it is stuck, a replica that can only time out what it gets is taken out of rotation."""
    replica = inproc(WEDGED, config={"fine": 0}, timeout=0.2, stuck_after=60.0)
    try:
        assert replica.post(json="a").status_code == 504  # its one thread stays wedged
        until(lambda: replica.get("/readyz").status_code == 503, "readiness to turn 503")
        assert replica.get("/readyz").json()["status"] == "every predictor thread is busy past its timeout"
        health = replica.get("/healthz")
        assert health.status_code == 200 and health.json()["ready"] is False  # alive: not stuck yet
        replica.instance.release.set()
        until(lambda: replica.get("/readyz").status_code == 200, "ready again once the thread is free")
    finally:
        replica.instance.release.set()


@pytest.mark.parametrize("kind", ["AsyncPredictor", "SleepyPredictor"])
def test_a_blocked_event_loop_answers_its_requests_from_the_watchdog_and_exits(inproc: Any, kind: str) -> None:
    replica = inproc(WEDGED, predictor_class=kind, config={"fine": 1}, health_check_timeout=1.0)
    try:
        assert replica.post(json="first").status_code == 200
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            blocked = _send(pool, replica.url, "blocks-the-loop")
            answer = blocked.result(30)
        assert answer.status_code == 504
        assert answer.headers["X-Request-ID"] == "blocks-the-loop"
        body = answer.json()
        assert body["request_id"] == "blocks-the-loop" and "event loop blocked" in body["error"]
        until(lambda: replica.exits, "the watchdog to exit the replica")
        assert "event loop blocked for" in replica.exits[0] and "health_check_timeout 1s" in replica.exits[0]
    finally:
        replica.instance.release.set()


@pytest.mark.parametrize("kind", ["Predictor", "AsyncPredictor"])
@pytest.mark.parametrize(
    ("mode", "said"),
    [
        ("raise", "check_health() raised RuntimeError: the GPU fell off the bus"),
        ("false", "check_health() returned False"),
        ("hang", "check_health() did not return within 0.5s"),
    ],
)
def test_check_health_failing_makes_the_replica_unhealthy_and_in_flight_requests_finish(
    inproc: Any, kind: str, mode: str, said: str
) -> None:
    replica = inproc(CHECKED, predictor_class=kind, health_check_period=0.1, health_check_timeout=0.5)
    instance = replica.instance
    try:
        until(lambda: instance.checks >= 2, "check_health to be called periodically")
        assert replica.get("/healthz").status_code == 200
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            held = _send(pool, replica.url, "hold")
            until(lambda: replica.replica.in_flight == 1, "a request in flight")
            instance.mode = mode
            until(lambda: replica.get("/healthz").status_code == 503, "the replica to turn unhealthy")
            health = replica.get("/healthz").json()
            assert health["status"] == "unhealthy" and health["reason"] == f"unhealthy: {said}"
            assert health["ready"] is False and replica.get("/readyz").status_code == 503
            instance.hold.set()
            assert held.result(30).status_code == 200  # unhealthy is replaced gracefully: in flight finishes
        assert replica.exits == []  # the controller drains and replaces it; it does not leave by itself
    finally:
        instance.release.set()
        instance.hold.set()


def test_a_predictor_without_check_health_stays_alive(inproc: Any) -> None:
    replica = inproc(WEDGED, config={"fine": 100}, health_check_period=0.05)
    time.sleep(0.2)  # several periods: nothing runs, nothing fails
    assert replica.get("/healthz").json()["status"] == "alive"


def test_keys_follow_the_keys_file_while_the_replica_runs(inproc: Any, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("first-key-0123456789\n")
    replica = inproc(WEDGED, config={"fine": 100}, api_keys_file=str(keys))
    first = replica.get("/healthz").json()["keys"]
    assert replica.post(json=1).status_code == 401
    assert replica.post(json=1, headers={"X-API-Key": "first-key-0123456789"}).status_code == 200
    # Rotated: the old key is refused and the new one works within a second or so, with no restart.
    _replace(keys, "# rotated\nsecond-key-0123456789\n")
    until(
        lambda: replica.post(json=1, headers={"X-API-Key": "second-key-0123456789"}).status_code == 200,
        "the new key to work",
    )
    assert replica.post(json=1, headers={"X-API-Key": "first-key-0123456789"}).status_code == 401
    assert replica.get("/healthz").json()["keys"] not in ("", first)
    # A vanished file never opens the API: the keys read last still apply.
    keys.unlink()
    time.sleep(0.6)
    assert replica.post(json=1).status_code == 401
    assert replica.post(json=1, headers={"X-API-Key": "second-key-0123456789"}).status_code == 200
    # An empty file opens it (the stack removed every key).
    _replace(keys, "# no keys: the API is open\n")
    until(lambda: replica.post(json=1).status_code == 200, "the API to open")


def _replace(path: Path, text: str) -> None:
    temp = path.with_suffix(".tmp")
    temp.write_text(text)
    os.replace(temp, path)


def test_a_stuck_replica_process_exits_with_its_own_code(tmp_path: Path) -> None:
    """The real server (python -m serving): a wedged predict, nobody to replace it: it exits 70 and says why
    in its error file (the local supervisor reads it)."""
    error_file = tmp_path / "error.json"
    config = ServingConfig(
        predictor_path=str(WEDGED), host="127.0.0.1", port=_free_port(), config={"fine": 0}, stuck_after=1.0
    )
    env = {**os.environ, "STACK_SERVING_CONFIG": config.to_json(), "STACK_STARTUP_ERROR_FILE": str(error_file)}
    proc = subprocess.Popen([sys.executable, "-m", "serving"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{config.port}"
        until(lambda: _ready(url), "the replica to start", timeout=60)
        answer = requests.post(url, json="x", headers={"X-Request-ID": "wedges"}, timeout=60)
        assert answer.status_code == 504 and answer.json()["request_id"] == "wedges"
        assert proc.wait(30) == EXIT_STUCK
        assert "predict running for" in error_file.read_text()
    finally:
        proc.kill()
        proc.communicate(timeout=10)


def _ready(url: str) -> bool:
    try:
        return requests.get(url + "/readyz", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
