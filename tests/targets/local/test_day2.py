"""Week two on the local target: stuck replicas replaced, key changes applied by `stack up`, failed rollouts
rolled back — with the real Traefik and real replica processes."""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cli import stack
from common import PREDICTORS, free_port
from waits import until

from loadgen import Load


def status(root: Path) -> dict[str, Any]:
    return json.loads(stack("status", "--local", "--json", "-p", str(root), cwd=root).stdout)


def api_of(root: Path, name: str = "day2") -> dict[str, Any]:
    return next(a for a in status(root)["apis"] if a["name"] == name)


def write_spec(root: Path, port: int, predictor: str = "", gateway: str = "", replicas: int = 2, **config: Any) -> None:
    settings = {"release": str(root / "release"), "unhealthy": str(root / "unhealthy"), **config}
    (root / "stack.yaml").write_text(
        f"project: day2{port}\n"
        f"gateway: {{port: {port}{gateway}}}\n"
        "apis:\n"
        "  - name: day2\n"
        "    predictor:\n"
        "      path: day2.py\n"
        f"      config: {json.dumps(settings)}\n"
        f"{predictor}"
        f"    autoscaling: {{min_replicas: {replicas}, max_replicas: {replicas}}}\n"
    )


@pytest.fixture
def day2(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    root = tmp_path / "day2"
    root.mkdir()
    shutil.copy(PREDICTORS / "day2.py", root / "day2.py")
    port = free_port()
    yield root, port
    (root / "release").touch()
    stack("down", "--local", str(root), cwd=root, check=False)


def post(url: str, payload: Any, rid: str = "", key: str = "", timeout: float = 60) -> requests.Response:
    headers = {"X-Request-ID": rid} if rid else {}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return requests.post(url, json=payload, headers=headers, timeout=timeout)


def all_fine(url: str, count: int = 12, key: str = "") -> bool:
    return all(post(url, {"n": i}, key=key, timeout=10).status_code == 200 for i in range(count))


def test_a_wedged_predict_is_answered_504_and_its_replica_replaced(day2: tuple[Path, int]) -> None:
    root, port = day2
    write_spec(root, port, predictor="      timeout: 1s\n      stuck_after: 4s\n")
    stack("up", "--local", str(root), cwd=root)
    url = f"http://127.0.0.1:{port}/day2"
    assert all_fine(url)
    before = {r["id"] for r in api_of(root)["replicas"]}
    # The wedged call answers 504 at its timeout; its thread stays wedged and the replica is stuck.
    wedged = post(url, {"wedge": True}, rid="wedge-1")
    assert wedged.status_code == 504 and wedged.json()["request_id"] == "wedge-1"
    stuck_at = time.monotonic()
    # Within 30 s of being stuck it is replaced, and every request is answered again.
    until(lambda: all_fine(url), "every request to be answered again", 40)
    api = until(lambda: (a := api_of(root))["ready"] == 2 and a["restarts"] >= 1 and a, "a replacement", 30)
    assert time.monotonic() - stuck_at < 4 + 30 + 10
    assert any("stuck: predict running for" in e for e in api["events"]), api["events"]
    assert {r["id"] for r in api["replicas"]} != before
    shown = stack("status", "--local", "-p", str(root), "day2", cwd=root).stdout
    assert "stuck: predict running for" in shown


def test_without_a_timeout_the_requests_held_by_a_stuck_replica_get_504_json(day2: tuple[Path, int]) -> None:
    root, port = day2
    write_spec(root, port, predictor="      stuck_after: 3s\n", replicas=1)
    stack("up", "--local", str(root), cwd=root)
    url = f"http://127.0.0.1:{port}/day2"
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        wedged = pool.submit(post, url, {"wedge": True}, "held-1")
        until(lambda: (root / "holding").exists(), "the wedging request to be in predict", 30)
        queued = [pool.submit(post, url, {"n": i}, f"queued-{i}") for i in range(2)]
        answers = [wedged.result(60), *(q.result(60) for q in queued)]
    for answer in answers:
        assert answer.status_code in (503, 504), answer.text
        body = answer.json()
        assert body["request_id"] in ("held-1", "queued-0", "queued-1") and "stuck" in body["error"]
    assert answers[0].status_code == 504 and answers[0].json()["request_id"] == "held-1"
    until(lambda: all_fine(url, 5), "the replacement to serve", 40)
    events = api_of(root)["events"]
    assert any("stuck: predict running for" in e for e in events), events


def test_a_blocked_event_loop_and_a_frozen_process_are_replaced(day2: tuple[Path, int]) -> None:
    root, port = day2
    write_spec(root, port, predictor="      class: AsyncPredictor\n      health_check_timeout: 3s\n")
    stack("up", "--local", str(root), cwd=root)
    url = f"http://127.0.0.1:{port}/day2"
    assert all_fine(url)
    # An async predict that blocks the loop: its request is answered 504 by the replica's watchdog.
    blocked = post(url, {"block_loop": True}, rid="loop-1")
    assert blocked.status_code == 504 and blocked.json()["request_id"] == "loop-1"
    assert "event loop blocked" in blocked.json()["error"]
    until(lambda: all_fine(url), "every request to be answered again", 40)
    api = until(lambda: (a := api_of(root))["ready"] == 2 and a["restarts"] >= 1 and a, "a replacement", 30)
    # Whichever comes first names the reason: the replica's watchdog (it exits once it answered), or the
    # controller's probes finding it silent past health_check_timeout + MARGIN.
    reasons = ("event loop blocked", "not answering its health check")
    assert any(reason in e for e in api["events"] for reason in reasons), api["events"]
    # A frozen process answers nothing, not even its watchdog: the controller's probes replace it.
    frozen = api["replicas"][0]
    os.kill(frozen["pid"], signal.SIGSTOP)
    try:
        api = until(
            lambda: (a := api_of(root))["ready"] == 2 and frozen["id"] not in {r["id"] for r in a["replicas"]} and a,
            "the frozen replica to be replaced",
            40,
        )
    finally:
        with contextlib_suppress():
            os.kill(frozen["pid"], signal.SIGCONT)
    assert any(f"replica {frozen['id']} replaced: stuck: not answering" in e for e in api["events"]), api["events"]
    assert api["restarts"] >= 2
    assert all_fine(url)


def contextlib_suppress() -> Any:
    import contextlib

    return contextlib.suppress(ProcessLookupError)


def test_an_unhealthy_replica_is_drained_and_replaced(day2: tuple[Path, int]) -> None:
    root, port = day2
    write_spec(root, port, predictor="      health_check_period: 0.5s\n")
    stack("up", "--local", str(root), cwd=root)
    url = f"http://127.0.0.1:{port}/day2"
    sick = api_of(root)["replicas"][0]
    with Load(url) as load:
        (root / "unhealthy").write_text(str(sick["pid"]))
        api = until(
            lambda: (a := api_of(root))["ready"] == 2 and sick["id"] not in {r["id"] for r in a["replicas"]} and a,
            "the unhealthy replica to be replaced",
            40,
        )
    assert load.failures == 0, load.codes
    reason = "unhealthy: check_health() raised RuntimeError: the GPU fell off the bus"
    assert any(f"replica {sick['id']} replaced: {reason}" in e for e in api["events"]), api["events"]


def test_api_keys_added_rotated_and_removed_by_stack_up(
    day2: tuple[Path, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, port = day2
    write_spec(root, port)
    stack("up", "--local", str(root), cwd=root)
    url = f"http://127.0.0.1:{port}/day2"
    assert post(url, {}).status_code == 200
    # Keys added to a running open stack: closed as soon as `stack up` returns.
    keys = root / "keys.txt"
    keys.write_text("alpha-key-0123456789\nbravo-key-0123456789\n")
    write_spec(root, port, gateway=", api_keys_file: keys.txt")
    stack("up", "--local", str(root), cwd=root)
    assert post(url, {}).status_code == 401
    assert post(url, {}, key="alpha-key-0123456789").status_code == 200
    # Rotated under load: a client with a key that stays never fails; the removed key is refused at once.
    keys.write_text("alpha-key-0123456789\ncharlie-key-0123456789\n")
    with Load(url, headers={"Authorization": "Bearer alpha-key-0123456789"}) as load:
        stack("up", "--local", str(root), cwd=root)
        assert post(url, {}, key="bravo-key-0123456789").status_code == 401
        assert post(url, {}, key="charlie-key-0123456789").status_code == 200
    assert load.total > 20 and load.failures == 0, load.codes
    # ${VAR} is read from the environment of this `stack up`, not the supervisor's (started long ago).
    monkeypatch.setenv("DAY2_KEYS", "delta-key-0123456789")
    write_spec(root, port, gateway=', api_keys: "${DAY2_KEYS}"')
    stack("up", "--local", str(root), cwd=root)
    assert post(url, {}, key="delta-key-0123456789").status_code == 200
    assert post(url, {}, key="alpha-key-0123456789").status_code == 401
    # Removed: the stack is open again, and `stack up` says so.
    write_spec(root, port)
    opened = stack("up", "--local", str(root), cwd=root)
    assert "open" in opened.stderr and "api_keys" in opened.stderr, opened.stderr
    assert post(url, {}).status_code == 200
    assert all(r["restarts"] == 0 for r in api_of(root)["replicas"])  # no replica restarted for any of it


def test_a_failed_rollout_rolls_back_and_the_autoscaler_resumes(day2: tuple[Path, int]) -> None:
    root, port = day2
    write_spec(root, port, replicas=4, version=1)
    stack("up", "--local", str(root), cwd=root)
    url = f"http://127.0.0.1:{port}/day2"
    old = api_of(root)["version"]
    write_spec(root, port, replicas=4, version=2, fail_init=True)
    with Load(url) as load:
        failed = stack("up", "--local", str(root), cwd=root, check=False)
    assert failed.returncode == 1
    assert "rolled back: replica day2-" in failed.stderr and "failed to start 3 times in a row" in failed.stderr
    assert "RuntimeError: the new model file is corrupt" in failed.stderr  # the new replica's last log lines
    assert load.total > 20 and load.failures == 0, load.codes
    api = api_of(root)
    assert api["status"] == "live" and api["ready"] == 4 and api["version"] == old and api["changed"] is True
    assert any("rolled back from version" in e for e in api["events"]), api["events"]
    assert {r["version"] for r in api["replicas"]} == {old}
    assert {post(url, {}).json()["version"] for _ in range(8)} == {1}
    # The new version that never gets ready is rolled back at its progress deadline.
    write_spec(root, port, replicas=4, version=3, hang_init=True)
    spec = (root / "stack.yaml").read_text()
    deadline = "    update: {progress_deadline: 3s}\n"
    (root / "stack.yaml").write_text(spec.replace("    autoscaling:", deadline + "    autoscaling:"))
    failed = stack("up", "--local", str(root), cwd=root, check=False)
    assert failed.returncode == 1 and "not ready within 3s (update.progress_deadline)" in failed.stderr
    api = api_of(root)
    assert api["status"] == "live" and api["version"] == old and api["ready"] == 4
    # A good version rolls out as usual afterwards.
    write_spec(root, port, replicas=4, version=4)
    stack("up", "--local", str(root), cwd=root)
    assert {post(url, {}).json()["version"] for _ in range(8)} == {4}
