"""Week two on the Compose target, on the real engine: stuck replicas replaced by the controller, key changes
applied by `stack up` without a restart, failed rollouts rolled back, images pruned, restarts counted across an
engine restart, and no process started inside idle replicas."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cli import stack
from common import PREDICTORS, free_port
from docker_stack import DOCKER, containers, remove_project
from waits import until

from loadgen import Load

pytestmark = DOCKER


def write_spec(root: Path, name: str, port: int, predictor: str = "", gateway: str = "", **config: Any) -> None:
    replicas = config.pop("replicas", 2)
    settings = {"release": "/tmp/release", "unhealthy": "/tmp/unhealthy", **config}
    (root / "stack.yaml").write_text(
        f"project: {name}\n"
        f"gateway: {{port: {port}{gateway}}}\n"
        f"prometheus: {{port: {free_port()}, scrape_interval: 1s}}\n"
        "apis:\n"
        "  - name: day2\n"
        "    predictor:\n"
        "      path: day2.py\n"
        f"      config: {json.dumps(settings)}\n"
        f"{predictor}"
        f"    autoscaling: {{min_replicas: {replicas}, max_replicas: {replicas}}}\n"
    )


@pytest.fixture
def day2(tmp_path: Path) -> Iterator[tuple[Path, str, int]]:
    root = tmp_path / "day2"
    root.mkdir()
    shutil.copy(PREDICTORS / "day2.py", root / "day2.py")
    name = f"d2{int(time.time() * 1000) % 10**8}"
    yield root, name, free_port()
    remove_project(root, name)


def status(root: Path) -> dict[str, Any]:
    return json.loads(stack("status", "--json", "-p", str(root), cwd=root).stdout)


def api_of(root: Path) -> dict[str, Any]:
    return status(root)["apis"][0]


def post(url: str, payload: Any, rid: str = "", key: str = "", timeout: float = 60) -> requests.Response:
    headers = {"X-Request-ID": rid} if rid else {}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return requests.post(url, json=payload, headers=headers, timeout=timeout)


def all_fine(url: str, count: int = 12, key: str = "") -> bool:
    try:
        return all(post(url, {"n": i}, key=key, timeout=10).status_code == 200 for i in range(count))
    except requests.RequestException:
        return False


def replicas_of(name: str) -> list[dict[str, Any]]:
    return [c for c in containers(name) if c["Config"]["Labels"].get("stack.api") == "day2"]


def test_stuck_replicas_are_replaced_with_their_reason(day2: tuple[Path, str, int]) -> None:
    root, name, port = day2
    write_spec(
        root,
        name,
        port,
        predictor="      class: AsyncPredictor\n      timeout: 1s\n      stuck_after: 3s\n"
        "      health_check_timeout: 3s\n",
    )
    stack("up", str(root), cwd=root)
    url = f"http://127.0.0.1:{port}/day2"
    assert all_fine(url)
    # No health check runs inside the replicas: the controller asks them over HTTP.
    assert all(
        not c["Config"].get("Healthcheck") or c["Config"]["Healthcheck"]["Test"] == ["NONE"] for c in replicas_of(name)
    )

    # An async predict that blocks the event loop: the replica's watchdog answers it 504, the replica is replaced.
    blocked = post(url, {"block_loop": True}, rid="loop-1")
    assert blocked.status_code == 504 and blocked.json()["request_id"] == "loop-1", blocked.text
    assert "event loop blocked" in blocked.json()["error"]
    until(lambda: all_fine(url), "every request to be answered again", 60)
    api = until(lambda: (a := api_of(root))["ready"] == 2 and a["restarts"] >= 1 and a, "the replacement", 60)
    # Whichever comes first names the reason: the replica's watchdog exiting (code 70) after answering, or the
    # controller's probes finding it silent past health_check_timeout + MARGIN (a loaded machine's watchdog
    # may linger that long).
    reasons = ("event loop blocked", "code 70", "not answering its health check")
    assert any(reason in e for e in api["events"] for reason in reasons), api["events"]

    # A frozen container answers nothing, not even its watchdog: the controller's probes replace it.
    frozen = replicas_of(name)[0]["Name"].lstrip("/")
    subprocess.run(["docker", "pause", frozen], check=True, capture_output=True)

    def replaced() -> dict[str, Any] | None:
        api = api_of(root)
        back = next((r for r in api["replicas"] if r["id"] == frozen and r["state"] == "ready"), None)
        said = any(f"replica {frozen} replaced: stuck: not answering" in e for e in api["events"])
        return api if api["ready"] == 2 and back and said else None

    api = until(replaced, "the frozen replica to be replaced", 60)
    shown = next(r for r in api["replicas"] if r["id"] == frozen)
    assert shown["state"] == "ready" and shown["restarts"] >= 1 and "replaced: stuck" in shown["last_event"]
    assert all_fine(url)
    text = stack("status", "-p", str(root), "day2", cwd=root).stdout
    assert "not answering its health check" in text and "restarts" in text


def test_api_keys_change_without_a_restart_or_a_failed_request(
    day2: tuple[Path, str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, name, port = day2
    write_spec(root, name, port)
    stack("up", str(root), cwd=root)
    url = f"http://127.0.0.1:{port}/day2"
    started = {c["Name"]: c["State"]["StartedAt"] for c in replicas_of(name)}
    assert post(url, {}).status_code == 200
    # Added to an open stack: closed when `stack up` returns.
    monkeypatch.setenv("DAY2_KEYS", "alpha-key-0123456789,bravo-key-0123456789")
    write_spec(root, name, port, gateway=', api_keys: "${DAY2_KEYS}"')
    stack("up", str(root), cwd=root)
    assert post(url, {}).status_code == 401
    assert post(url, {}, key="bravo-key-0123456789").status_code == 200
    # Rotated under load: the key that stays never fails; the removed one is refused when `stack up` returns.
    monkeypatch.setenv("DAY2_KEYS", "alpha-key-0123456789,charlie-key-0123456789")
    with Load(url, headers={"Authorization": "Bearer alpha-key-0123456789"}) as load:
        stack("up", str(root), cwd=root)
        assert post(url, {}, key="bravo-key-0123456789").status_code == 401
        assert post(url, {}, key="charlie-key-0123456789").status_code == 200
    assert load.total > 20 and load.failures == 0, load.codes
    # Removed: open again, with a warning.
    write_spec(root, name, port)
    opened = stack("up", str(root), cwd=root)
    assert "gateway.api_keys was removed" in opened.stderr
    assert post(url, {}).status_code == 200
    assert {c["Name"]: c["State"]["StartedAt"] for c in replicas_of(name)} == started  # nothing restarted


def test_a_failed_rollout_rolls_back_and_old_images_are_pruned(day2: tuple[Path, str, int]) -> None:
    root, name, port = day2
    write_spec(root, name, port, version=1)
    stack("up", str(root), cwd=root)
    url = f"http://127.0.0.1:{port}/day2"
    old = api_of(root)["version"]
    write_spec(root, name, port, version=2, fail_init=True)
    with Load(url) as load:
        failed = stack("up", str(root), cwd=root, check=False)
    assert failed.returncode == 1, failed.stderr
    assert "rolled back: replica" in failed.stderr and "failed to start" in failed.stderr
    assert "RuntimeError: the new model file is corrupt" in failed.stderr  # the new replica's last log lines
    assert load.total > 20 and load.failures == 0, load.codes
    api = api_of(root)
    assert api["status"] == "live" and (api["ready"], api["desired"]) == (2, 2) and api["version"] == old
    assert api["changed"] is True
    assert any("rolled back from version" in e for e in api["events"]), api["events"]
    assert {c["Config"]["Labels"]["stack.version"] for c in replicas_of(name)} == {old}
    # The controller keeps the old version's count again: a killed replica comes back.
    victim = replicas_of(name)[0]["Id"]
    subprocess.run(["docker", "rm", "-f", victim], check=True, capture_output=True)
    until(
        lambda: api_of(root)["ready"] == 2 and victim[:12] not in {c["Id"][:12] for c in replicas_of(name)},
        "the count kept",
        60,
    )

    # Good rollouts: each API keeps its current image and the one before (build.keep_images: 2).
    for version in (3, 4):
        write_spec(root, name, port, version=version)
        stack("up", str(root), cwd=root)
    assert {post(url, {}).json()["version"] for _ in range(6)} == {4}
    tags = subprocess.run(
        ["docker", "images", "--filter", f"label=stack.project={name}", "--format", "{{.Repository}}:{{.Tag}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert len(tags) == 2 and f"{name}-day2:{api_of(root)['version']}" in tags, tags
    shown = status(root)
    assert shown["images"] == 2 and shown["images_bytes"] > 0
    down = stack("down", str(root), cwd=root)
    assert down.stdout.strip() == "stopped" and "stack down --images" in down.stderr
    removed = stack("down", "--images", str(root), cwd=root)
    assert "removed 2 image(s)" in removed.stdout
    assert not subprocess.run(
        ["docker", "images", "-q", "--filter", f"label=stack.project={name}"], capture_output=True, text=True
    ).stdout.strip()


def test_an_unhealthy_replica_is_drained_and_replaced(day2: tuple[Path, str, int]) -> None:
    root, name, port = day2
    write_spec(root, name, port, predictor="      health_check_period: 0.5s\n")
    stack("up", str(root), cwd=root)
    url = f"http://127.0.0.1:{port}/day2"
    sick = replicas_of(name)[0]
    with Load(url) as load:
        # check_health fails in the replica whose pid the file names: the replica is pid 1 of its container,
        # so the file is written inside one container only.
        subprocess.run(
            ["docker", "exec", sick["Id"], "python", "-c", "open('/tmp/unhealthy', 'w').write('1')"],
            check=True,
            capture_output=True,
        )
        # Replaced (the event is written when the drain starts), started again and counted, serving again.
        api = until(
            lambda: (
                (a := api_of(root))["ready"] == 2
                and any(f"replica {sick['Name'].lstrip('/')} replaced: unhealthy" in e for e in a["events"])
                and a["restarts"] >= 1
                and a
            ),
            "the unhealthy replica to be replaced, counted as a restart",
            90,
        )
    assert load.failures == 0, load.codes
    assert next(r for r in api["replicas"] if r["id"] == sick["Name"].lstrip("/"))["restarts"] >= 1, api


_ENGINES: list[subprocess.Popen[bytes]] = []


def _dockerd() -> int | None:
    """The engine's pid when the tests' own tooling started it (no service manager would restart it)."""
    found = subprocess.run(["pgrep", "-x", "dockerd"], capture_output=True, text=True).stdout.split()
    if len(found) != 1:
        return None
    pid = int(found[0])
    cgroup = Path(f"/proc/{pid}/cgroup").read_text()
    return None if "docker.service" in cgroup else pid


@pytest.mark.skipif(_dockerd() is None, reason="the engine runs under a service manager: not restarted by tests")
def test_restarts_are_counted_across_an_engine_restart(day2: tuple[Path, str, int]) -> None:
    root, name, port = day2
    write_spec(root, name, port)
    stack("up", str(root), cwd=root)
    url = f"http://127.0.0.1:{port}/day2"
    # One restart before: a replica killed behind the stack's back is started again and counted.
    victim = replicas_of(name)[0]["Name"].lstrip("/")
    subprocess.run(["docker", "kill", victim], check=True, capture_output=True)
    until(
        lambda: (
            next(r for r in api_of(root)["replicas"] if r["id"] == victim)["restarts"] == 1
            and api_of(root)["ready"] == 2
        ),
        "the killed replica back and counted",
        60,
    )
    pid = _dockerd()
    assert pid is not None
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
    os.kill(pid, signal.SIGTERM)
    until(lambda: not Path(f"/proc/{pid}").exists(), "the engine to stop", 60)
    with open("/var/log/dockerd.log", "ab") as log:
        engine = subprocess.Popen(
            [c.decode() for c in cmdline], stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
        )
    _ENGINES.append(engine)  # it outlives the test (every later test's engine): kept, never waited for
    until(lambda: subprocess.run(["docker", "info"], capture_output=True).returncode == 0, "the engine back", 90)
    until(lambda: all_fine(url, 5), "the stack to serve again by itself", 120)
    api = until(lambda: (a := api_of(root))["ready"] == 2 and a, "both replicas", 60)
    counts = {r["id"]: r["restarts"] for r in api["replicas"]}
    assert counts[victim] == 2 and all(n >= 1 for n in counts.values()), counts
    assert any("the Docker engine restarted" in e for e in api["events"]), api["events"]
    gateway = next(c for c in status(root)["components"] if c["name"] == "gateway")
    assert gateway["restarts"] >= 1


def test_idle_replicas_start_no_process(day2: tuple[Path, str, int]) -> None:
    """Docker's health check started `python -m serving.probe` every 2 s in every replica (6% of a core each);
    the controller's HTTP probes start nothing: the replica's process list stays its own."""
    root, name, port = day2
    write_spec(root, name, port)
    stack("up", str(root), cwd=root)
    replica = replicas_of(name)[0]["Id"]

    def others() -> list[str]:
        """Processes in the replica besides the replica itself (its `python -m serving`)."""
        listed = subprocess.run(["docker", "top", replica, "-eo", "pid,args"], capture_output=True, text=True)
        return [line for line in listed.stdout.splitlines()[1:] if "-m serving" not in line]

    seen = []
    for _ in range(24):  # six seconds: three of the old health check's periods
        seen += others()
        time.sleep(0.25)
    assert seen == []
    inspected = json.loads(subprocess.run(["docker", "inspect", replica], capture_output=True, text=True).stdout)[0]
    assert not inspected.get("ExecIDs"), inspected["ExecIDs"]  # nothing was ever run inside it
