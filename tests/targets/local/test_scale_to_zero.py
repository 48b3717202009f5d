"""Scale to zero on the local target: an idle API runs no replica, and the next requests still succeed."""

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
from common import free_port
from waits import until_seen

PREDICTOR = """\
import os
import time


class Predictor:
    def __init__(self, config):
        if os.path.exists(config["broken_flag"]):
            raise RuntimeError("the weights are gone")
        time.sleep(0.5)  # a model load

    def predict(self, payload):
        return {"echo": payload}
"""


def status(root: Path) -> dict:
    return json.loads(stack("status", "--local", "--json", "-p", str(root), cwd=root).stdout)["apis"][0]


def wait_for(root: Path, state: str, timeout: float = 90) -> dict:
    return until_seen(lambda: status(root), lambda api: api["status"] == state, f"the API {state}", timeout, 0.5)


@pytest.fixture
def project(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    if shutil.which("prometheus") is None:
        pytest.skip("the idle signal comes from Prometheus here (Debian's prometheus package)")
    root = tmp_path / "zero"
    root.mkdir()
    (root / "predictor.py").write_text(PREDICTOR)
    port = free_port()
    (root / "stack.yaml").write_text(
        "project: zero\n"
        f"gateway: {{port: {port}}}\n"
        f"prometheus: {{port: {free_port()}, scrape_interval: 1s}}\n"
        "apis:\n"
        "  - name: echo\n"
        "    predictor:\n"
        "      path: predictor.py\n"
        f"      config: {{broken_flag: {json.dumps(str(root / 'broken'))}}}\n"
        "    autoscaling:\n"
        "      min_replicas: 0\n"
        "      max_replicas: 2\n"
        "      idle_timeout: 3s\n"
        "      window: 4s\n"
        "      downscale_stabilization_period: 2s\n"
        "      upscale_stabilization_period: 0s\n"
        # A splitter in front of it: a request through the splitter wakes it too.
        "splitters:\n"
        "  - name: front\n"
        "    apis: [{name: echo, weight: 1}]\n"
    )
    yield root, port
    stack("down", "--local", str(root), cwd=root, check=False)


def test_idle_api_scales_to_zero_and_wakes_for_requests(project: tuple[Path, int]) -> None:
    root, port = project
    url = f"http://127.0.0.1:{port}/echo"
    stack("up", "--local", str(root), cwd=root)
    assert status(root)["ready"] == 1  # `stack up` proves the API starts
    zero = wait_for(root, "scaled to zero")
    assert zero["replicas"] == [] and zero["desired"] == 0
    table = stack("status", "--local", "-p", str(root), cwd=root).stdout
    assert "scaled to zero (idle, since " in table, table

    # The next request wakes a replica and is answered: its latency is the cold start.
    started = time.monotonic()
    first = requests.post(url, json={"n": 1}, timeout=120)
    cold = time.monotonic() - started
    assert first.status_code == 200 and first.json() == {"echo": {"n": 1}}, first.text
    assert cold >= 0.5  # it waited for the model load
    wait_for(root, "live", timeout=15)  # once the gateway routes to the woken replica (it was answered directly)
    metrics = requests.get(f"http://127.0.0.1:{_metrics_port(root)}/metrics", timeout=5).text
    assert 'stack_activator_cold_starts_total{api="echo"} 1.0' in metrics

    # 50 concurrent requests at zero: every one answered.
    wait_for(root, "scaled to zero")
    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(lambda i: requests.post(url, json={"i": i}, timeout=120), range(50)))
    assert [a.status_code for a in answers] == [200] * 50
    assert sorted(a.json()["echo"]["i"] for a in answers) == list(range(50))

    # Through a splitter, the same.
    wait_for(root, "scaled to zero")
    through = requests.post(f"http://127.0.0.1:{port}/front", json={"via": "splitter"}, timeout=120)
    assert through.status_code == 200 and through.json() == {"echo": {"via": "splitter"}}, through.text

    # A replica that cannot start: the held requests get its start error, not a hang.
    wait_for(root, "scaled to zero")
    (root / "broken").write_text("")
    failed = requests.post(url, json={}, timeout=180)
    assert failed.status_code == 503, failed.text
    assert "could not start" in failed.json()["error"] and "the weights are gone" in failed.json()["error"]
    assert failed.headers["Retry-After"].isdigit()
    assert status(root)["status"] == "error"

    # Mended, and by hand: `stack scale echo 0 --force`, then a request wakes it the same way.
    (root / "broken").unlink()
    stack("scale", "--local", "echo", "0", "--force", "-p", str(root), cwd=root)
    wait_for(root, "scaled to zero", timeout=30)
    assert requests.post(url, json={}, timeout=120).status_code == 200


def _metrics_port(root: Path) -> int:
    return int(json.loads((root / ".stack/local/state.json").read_text())["metrics_port"])
