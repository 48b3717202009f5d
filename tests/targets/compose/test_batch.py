"""BatchAPI jobs on Compose, on the real engine: worker containers copied from the API's template by the
controller, a killed worker's batch handed out again, the controller restarted mid-job, keys checked,
every worker removed once the job ends."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cli import stack
from common import free_port
from docker_stack import DOCKER, remove_project

pytestmark = DOCKER

KEY = "batch-compose-key-42"
AUTH = {"Authorization": f"Bearer {KEY}"}

# Gated items wait for a file the test creates inside the worker's own container (`docker exec`).
PREDICTOR = """
import os, pathlib, time

class PythonPredictor:
    def __init__(self, config, job_spec):
        self.job = job_spec
        self.factor = config["factor"]

    def predict(self, payload, batch_id):
        for item in payload:
            if item == "gate":
                pathlib.Path("/tmp/started").write_text(batch_id)
                deadline = time.monotonic() + 120
                while not pathlib.Path("/tmp/release").exists() and time.monotonic() < deadline:
                    time.sleep(0.05)
        print("batch", batch_id, [i * self.factor if isinstance(i, int) else i for i in payload], flush=True)

    def on_job_complete(self):
        print("complete", self.job["job_id"], self.job["total_batch_count"], flush=True)
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, str, int]]:
    root = tmp_path / "batchc"
    root.mkdir()
    (root / "predictor.py").write_text(PREDICTOR)
    name = f"bc{int(time.time() * 1000) % 10**8}"
    port = free_port()
    monkeypatch.setenv("BATCH_KEYS", KEY)
    (root / "stack.yaml").write_text(
        f"project: {name}\n"
        f'gateway: {{port: {port}, api_keys: "${{BATCH_KEYS}}"}}\n'
        f"prometheus: {{port: {free_port()}}}\n"
        "apis:\n  - name: scorer\n    kind: BatchAPI\n    predictor:\n      path: predictor.py\n"
        "      config: {factor: 10}\n    compute: {mem: 256Mi}\n"
    )
    yield root, name, port
    remove_project(root, name)


def workers(name: str, job_id: str) -> list[dict[str, Any]]:
    ids = _docker(
        "ps", "-aq", f"--filter=label=com.docker.compose.project={name}", f"--filter=label=stack.job={job_id}"
    )
    if not ids:
        return []
    # One removed between the two calls is simply not there any more (docker inspect skips it, exit 1).
    found = subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True).stdout
    return json.loads(found) if found.strip() else []


def _docker(*args: str) -> list[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True).stdout.split()


def gated_worker(name: str, job_id: str, exclude: set[str]) -> str:
    """The running worker whose batch waits on the gate (it wrote /tmp/started), other than `exclude`."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for worker in workers(name, job_id):
            if worker["State"]["Running"] and worker["Id"] not in exclude:
                probe = subprocess.run(["docker", "exec", worker["Id"], "test", "-s", "/tmp/started"])
                if probe.returncode == 0:
                    return str(worker["Id"])
        time.sleep(0.3)
    raise AssertionError(f"no worker of {job_id} reached the gated batch")


def job(port: int, job_id: str) -> dict[str, Any]:
    answer = requests.get(f"http://127.0.0.1:{port}/scorer", params={"jobID": job_id}, headers=AUTH, timeout=10)
    assert answer.status_code == 200, answer.text
    status: dict[str, Any] = answer.json()["job_status"]
    return status


def ended(port: int, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        status = job(port, job_id)
        if status["status"] not in ("status_enqueuing", "status_running"):
            return status
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not end: {status}")


def test_a_job_on_worker_containers_survives_a_killed_worker_and_a_restarted_controller(
    project: tuple[Path, str, int],
) -> None:
    root, name, port = project
    up = stack("up", str(root), cwd=root)
    assert f"scorer           http://127.0.0.1:{port}/scorer  (BatchAPI" in up.stdout
    url = f"http://127.0.0.1:{port}/scorer"
    body = {"workers": 2, "item_list": {"items": [1, 2, "gate", 3, 4, 5], "batch_size": 1}}
    assert requests.post(url, json=body, timeout=10).status_code == 401  # keys apply to BatchAPIs too
    submitted = requests.post(url, json=body, headers=AUTH, timeout=30)
    assert submitted.status_code == 200, submitted.text
    job_id = submitted.json()["job_id"]

    first = gated_worker(name, job_id, set())
    spec = workers(name, job_id)[0]
    assert spec["Config"]["User"].split(":")[0] == "10001" and spec["HostConfig"]["CapDrop"] == ["ALL"]
    assert spec["HostConfig"]["Memory"] == 256 * 1024**2 and spec["HostConfig"]["RestartPolicy"]["Name"] == "no"
    assert not any(p for p in (spec["HostConfig"]["PortBindings"] or {}).values())  # nothing published
    subprocess.run(["docker", "kill", first], check=True, capture_output=True)  # mid-batch

    # The controller restarted while the job runs: the job goes on from its queue on disk.
    (controller,) = _docker(
        "ps", "-q", f"--filter=label=com.docker.compose.project={name}", "--filter=label=stack.role=autoscaler"
    )
    subprocess.run(["docker", "stop", controller], check=True, capture_output=True)
    before = {w["Id"] for w in workers(name, job_id)}  # the old controller's workers: the new one stops them
    subprocess.run(["docker", "start", controller], check=True, capture_output=True)
    again = gated_worker(name, job_id, before | {first})
    subprocess.run(["docker", "exec", again, "touch", "/tmp/release"], check=True)
    status = ended(port, job_id)
    assert status["status"] == "status_succeeded", status
    assert status["batch_metrics"]["succeeded"] == 6 and status["batch_metrics"]["failed"] == 0
    listed = json.loads(stack("jobs", "--json", "-p", str(root), cwd=root).stdout)
    assert [j["job_id"] for j in listed] == [job_id]
    deadline = time.monotonic() + 60
    while workers(name, job_id):  # every worker removed once the job ended
        assert time.monotonic() < deadline, [w["Name"] for w in workers(name, job_id)]
        time.sleep(0.5)
    bad = requests.post(
        url, json={"workers": 1, "item_list": {"items": [1], "batch_size": 0}}, headers=AUTH, timeout=10
    )
    assert bad.status_code == 400 and bad.json()["field"] == "item_list.batch_size"
