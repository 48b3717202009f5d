"""Scale to zero on the real Compose stack: idle, no replica runs; the next requests wake one and succeed."""

from __future__ import annotations

import concurrent.futures
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from cli import stack
from common import EXAMPLES, free_port
from docker_stack import DOCKER, containers, remove_project
from waits import until_seen

pytestmark = DOCKER


@pytest.fixture
def project(tmp_path: Path) -> Iterator[tuple[Path, str, int]]:
    root = tmp_path / "echo"
    shutil.copytree(EXAMPLES / "echo", root, ignore=shutil.ignore_patterns(".stack"))
    name = f"zero{int(time.time() * 1000) % 10**8}"
    port = free_port()
    (root / "stack.yaml").write_text(
        f"project: {name}\n"
        f"gateway: {{port: {port}}}\n"
        f"prometheus: {{port: {free_port()}, scrape_interval: 1s}}\n"
        "apis:\n"
        "  - name: echo\n"
        # A short drain: the controller takes a stopping replica out of the routes on its kill event.
        "    predictor: {path: predictor.py, drain_delay: 1s}\n"
        "    autoscaling:\n"
        "      min_replicas: 0\n"
        "      max_replicas: 2\n"
        "      idle_timeout: 3s\n"
        "      window: 4s\n"
        "      downscale_stabilization_period: 2s\n"
        "      upscale_stabilization_period: 0s\n"
    )
    yield root, name, port
    remove_project(root, name)


def api_status(root: Path) -> dict:
    return json.loads(stack("status", "--json", "-p", str(root), cwd=root).stdout)["apis"][0]


def wait_for(root: Path, state: str, timeout: float = 120) -> dict:
    return until_seen(lambda: api_status(root), lambda api: api["status"] == state, f"the API {state}", timeout, 0.5)


def running(name: str) -> list[dict]:
    return [c for c in containers(name) if c["Config"]["Labels"].get("stack.api") and c["State"]["Running"]]


def test_idle_api_runs_no_replica_and_wakes_for_requests(project: tuple[Path, str, int]) -> None:
    root, name, port = project
    url = f"http://127.0.0.1:{port}/echo"
    stack("up", str(root), cwd=root)
    assert len(running(name)) == 1
    wait_for(root, "scaled to zero")
    assert running(name) == []

    started = time.monotonic()
    first = requests.post(url, json={"a": 1}, timeout=120)
    cold = time.monotonic() - started
    assert first.status_code == 200 and first.json()["payload"] == {"a": 1}, first.text
    assert len(running(name)) == 1
    assert cold < 60, cold
    assert wait_for(root, "live", timeout=30)["ready"] == 1

    wait_for(root, "scaled to zero")
    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(lambda i: requests.post(url, json={"i": i}, timeout=120), range(50)))
    assert [a.status_code for a in answers] == [200] * 50, [a.text for a in answers if a.status_code != 200][:3]
    assert sorted(a.json()["payload"]["i"] for a in answers) == list(range(50))
