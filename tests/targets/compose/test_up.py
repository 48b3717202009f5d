"""`stack up` on a real Docker engine with Compose v2, Traefik and Prometheus, end to end."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from cli import STACK, stack
from common import EXAMPLES, free_port
from docker_stack import DOCKER, containers, prom_port, remove_project, write_spec
from waits import until_seen

from loadgen import Load

pytestmark = DOCKER


@pytest.fixture
def project(tmp_path: Path) -> Iterator[tuple[Path, str, int]]:
    root = tmp_path / "echo"
    shutil.copytree(EXAMPLES / "echo", root, ignore=shutil.ignore_patterns(".stack"))
    name = f"e2e{int(time.time() * 1000) % 10**8}"
    port = free_port()
    write_spec(root, name, port, free_port(), "v1")
    yield root, name, port
    remove_project(root, name)


def test_up_scale_update_status_kill_down(project: tuple[Path, str, int]) -> None:
    root, name, port = project
    url = f"http://127.0.0.1:{port}/echo"
    up = stack("up", str(root), cwd=root)
    assert f"http://127.0.0.1:{port}/echo" in up.stdout
    assert "wheels for the image's Python 3.11 (x86_64)" in up.stderr  # resolved now, or by an earlier build
    assert f"building {name}-echo:" in up.stderr
    # This engine runs Docker's userland proxy (docker-offline's default): `stack up` says what it costs.
    assert "the engine's userland proxy carries the gateway's port" in up.stderr
    assert requests.post(url, json={"a": 1}, timeout=10).json() == {"greeting": "v1", "payload": {"a": 1}, "query": {}}

    replicas = [c for c in containers(name) if c["Config"]["Labels"].get("stack.api") == "echo"]
    assert len(replicas) == 2
    assert all(not c["HostConfig"]["PortBindings"] for c in replicas)  # only Traefik is published

    # A second `stack up` with nothing changed touches nothing.
    again = stack("up", str(root), cwd=root)
    assert "is up to date" in again.stderr and "rolling update" not in again.stderr
    assert {c["Id"] for c in containers(name)} >= {c["Id"] for c in replicas}

    # `stack scale`: refused while autoscaled, taken with --force; `stack logs` names each replica.
    refused = stack("scale", "echo", "3", "-p", str(root), cwd=root, check=False)
    assert refused.returncode == 1 and "the autoscaler owns echo" in refused.stderr
    # `stack logs --follow` started before the scale-out follows the replica it adds, too.
    follower = subprocess.Popen(
        [*STACK, "logs", "echo", "--follow", "-p", str(root)], stdout=subprocess.PIPE, text=True, cwd=root
    )
    followed: list[str] = []
    reader = threading.Thread(target=lambda: followed.extend(follower.stdout or []), daemon=True)
    reader.start()
    try:
        stack("scale", "echo", "3", "--force", "-p", str(root), cwd=root)
        api = json.loads(stack("status", "--json", "-p", str(root), cwd=root).stdout)["apis"][0]
        assert (api["ready"], api["desired"]) == (3, 3) and api["autoscaled"] is False, api
        ids = {r["id"] for r in api["replicas"]}
        deadline = time.monotonic() + 30
        while {line.split(" | ", 1)[0].strip() for line in followed if "ready: api echo" in line} != ids:
            assert time.monotonic() < deadline, (ids, followed)
            time.sleep(0.2)
    finally:
        follower.terminate()
        follower.wait(10)
        reader.join(10)  # it read to the end: the pipe can close
        if follower.stdout is not None:
            follower.stdout.close()
    logs = stack("logs", "echo", "-p", str(root), cwd=root).stdout
    assert "ready: api echo" in logs
    recent = stack("logs", "echo", "--since", "10m", "-p", str(root), cwd=root).stdout  # Docker's --since
    assert "ready: api echo" in recent and " | " in recent
    prefixes = {line.split(" | ", 1)[0].strip() for line in logs.splitlines() if " | " in line}
    assert prefixes == ids, (prefixes, ids)
    unknown = stack("logs", str(root), "nope", cwd=root, check=False)
    assert unknown.returncode == 1 and "no API named 'nope'" in unknown.stderr

    # Change the predictor's config and `stack up` under load: a rolling update with no failed request.
    write_spec(root, name, port, prom_port(root), "v2")
    with Load(url, concurrency=4) as load:
        update = stack("up", str(root), cwd=root)
        time.sleep(1)
    assert "rolling update" in update.stderr
    assert load.failures == 0 and load.codes[200] > 100, load.codes
    assert requests.post(url, json={}, timeout=10).json()["greeting"] == "v2"

    # `stack status` shows the traffic, from Prometheus.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        api = json.loads(stack("status", "--json", "-p", str(root), cwd=root).stdout)["apis"][0]
        if api.get("2xx", 0) > 0 and api.get("requests_per_second"):
            break
        requests.post(url, json={}, timeout=10)
        time.sleep(1)
    # The update kept the count set by hand (3) and handed the API back to the autoscaler.
    assert api["status"] == "live" and (api["ready"], api["desired"]) == (3, 3) and api["autoscaled"], api
    assert api["2xx"] > 0 and api["requests_per_second"] > 0 and api["p99_ms"] is not None, api
    table = stack("status", "-p", str(root), cwd=root).stdout
    assert "req/s" in table and "live" in table

    # The files change after `stack up`: scale, logs and status still act on what is deployed.
    (root / "predictor.py").write_text((root / "predictor.py").read_text() + "\n# edited after stack up\n")
    for count in (2, 3):
        stack("scale", "echo", str(count), "--force", "-p", str(root), cwd=root)
        api = json.loads(stack("status", "--json", "-p", str(root), cwd=root).stdout)["apis"][0]
        assert (api["ready"], api["desired"], api["changed"]) == (count, count, True), api
    assert "ready: api echo" in stack("logs", "echo", "-p", str(root), cwd=root).stdout
    assert "files changed since the last `stack up`" in stack("status", "-p", str(root), cwd=root).stdout

    # A replica crashes under load: bounded failures, and it comes back.
    victim = next(c for c in containers(name) if c["Config"]["Labels"].get("stack.api") == "echo")
    with Load(url, concurrency=4, timeout=10) as load:
        time.sleep(1)
        # A crash, as the engine sees one: the process dies (`docker kill` would count as a manual stop).
        subprocess.run(["kill", "-9", str(victim["State"]["Pid"])], check=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            api = json.loads(stack("status", "--json", "-p", str(root), cwd=root).stdout)["apis"][0]
            if api["ready"] == 3 and time.monotonic() > deadline - 55:
                break
            time.sleep(1)
    assert api["ready"] == 3, api
    # Lost: what was in flight on the crashed replica, and what Traefik sent it before the engine
    # reported the death; requests in flight can hang until the client's timeout, because the
    # container's network goes with it. Each of the 4 clients can lose at most about one of each.
    assert load.failures <= 8 and load.codes[200] > 50, load.codes

    assert stack("down", "--volumes", str(root), cwd=root).stdout.strip() == "stopped"
    assert containers(name) == []
    assert stack("down", str(root), cwd=root).stdout.strip() == "nothing was running"
    networks = subprocess.run(
        ["docker", "network", "ls", "-q", "--filter", f"name={name}-stack"], capture_output=True, text=True
    ).stdout.split()
    assert networks == []


def test_failing_replica_shows_its_error(project: tuple[Path, str, int]) -> None:
    root, _name, _port = project
    (root / "predictor.py").write_text(
        "class Predictor:\n    def __init__(self, config):\n        raise RuntimeError('weights missing')\n"
        "    def predict(self, payload):\n        return payload\n"
    )
    result = stack("up", str(root), cwd=root, check=False)
    assert result.returncode == 1
    assert "failed to start" in result.stderr and "its last log lines" in result.stderr
    assert "predictor.py:3: Predictor.__init__ failed: RuntimeError: weights missing" in result.stderr
    # The reason is the replica's own words, read from what it wrote (not from its log): in `stack up`'s
    # error and in `stack status`, as the local target shows it.
    said = r"failed to start \(state \w+, exit code \d+\): /app/predictor\.py:3: Predictor\.__init__ failed"
    assert re.search(said, result.stderr), result.stderr

    def shown() -> dict:
        return json.loads(stack("status", "--json", str(root), cwd=root).stdout)["apis"][0]

    # Between two of Docker's restarts the replica runs for a moment: the error shows while it is down.
    api = until_seen(shown, lambda a: a["status"] == "error", "the API in error", 60)
    assert "RuntimeError: weights missing" in api["error"], api


def test_gateway_port_in_use(project: tuple[Path, str, int]) -> None:
    root, _name, port = project
    with socket.socket() as blocker:
        blocker.bind(("0.0.0.0", port))
        blocker.listen()
        result = stack("up", str(root), cwd=root, check=False)
    assert result.returncode == 1
    assert f"gateway port {port} is already in use" in result.stderr


def test_gpu_api_without_nvidia_runtime(project: tuple[Path, str, int]) -> None:
    root, _name, _port = project
    text = (root / "stack.yaml").read_text().replace("    autoscaling:", "    compute: {gpu: 1}\n    autoscaling:")
    (root / "stack.yaml").write_text(text)
    result = stack("up", "--gpus", "4", str(root), cwd=root, check=False)
    assert result.returncode == 1
    assert "API(s) echo ask for GPUs but Docker has no NVIDIA runtime" in result.stderr
    assert "nvidia-ctk runtime configure" in result.stderr


def test_failed_build_says_which_step_and_the_fix(project: tuple[Path, str, int]) -> None:
    # pip inside the image (the opt-in) cannot reach an index from containers here: what a
    # newcomer behind a TLS-intercepting proxy meets. The message names the step and the fix.
    root, _name, _port = project
    (root / "requirements.txt").write_text("six\n")
    text = (root / "stack.yaml").read_text().replace("apis:\n", "build: {wheelhouse: false}\napis:\n", 1)
    (root / "stack.yaml").write_text(text)
    result = stack("up", str(root), cwd=root, check=False, timeout=600)
    assert result.returncode == 1
    first = result.stderr.split("error: ", 1)[1].splitlines()[0]
    assert "failed at step" in first and "RUN pip install" in first, first
    assert "pip inside the image cannot reach the package index" in first
    assert "build.wheelhouse: true" in first


def test_missing_base_image_is_named(project: tuple[Path, str, int]) -> None:
    root, _name, _port = project
    text = (root / "stack.yaml").read_text().replace("apis:\n", "build: {base_image: 'stack-missing:none'}\napis:\n", 1)
    (root / "stack.yaml").write_text(text)
    result = stack("up", str(root), cwd=root, check=False)
    assert result.returncode == 1
    assert "the base image stack-missing:none is not on this machine" in result.stderr


def test_missing_package_fails_the_wheelhouse(project: tuple[Path, str, int]) -> None:
    root, _name, _port = project
    (root / "requirements.txt").write_text("stack-no-such-package-xyz==1.0\n")
    result = stack("up", str(root), cwd=root, check=False)
    assert result.returncode == 1
    assert "resolving the wheelhouse failed" in result.stderr
    assert "stack-no-such-package-xyz" in result.stderr
