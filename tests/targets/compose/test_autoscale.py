"""The autoscaler on the real Compose stack: real Prometheus, real Traefik, real replicas.

One API with target concurrency 1 and short periods. Eight requests held in
flight grow it from 1 to at least 4 replicas with every request answered;
the replicas it adds are Compose's own (`docker compose ps` lists them, the
next `stack up` keeps them, `stack down` removes them); stopping Prometheus
holds the count; once Prometheus is back and the load is gone, it returns to
min_replicas after the stabilization period.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from cli import stack
from common import PREDICTORS, free_port
from docker_stack import DOCKER, containers, remove_project
from waits import until

from loadgen import Load

pytestmark = DOCKER


@pytest.fixture
def slow_project(tmp_path: Path) -> Iterator[tuple[Path, str, int, int]]:
    root = tmp_path / "slow"
    root.mkdir()
    shutil.copy(PREDICTORS / "quarter_second.py", root / "predictor.py")
    name = f"as{int(time.time() * 1000) % 10**8}"
    port, prom_port = free_port(), free_port()
    (root / "stack.yaml").write_text(
        f"project: {name}\n"
        f"gateway: {{port: {port}}}\n"
        f"prometheus: {{port: {prom_port}, scrape_interval: 1s}}\n"
        "build: {wheelhouse: true}\n"
        "apis:\n"
        "  - name: slow\n"
        # A short drain: the controller takes a stopping replica out of the routes on the engine's
        # kill event, before the replica stops listening.
        "    predictor: {path: predictor.py, grace_period: 5s, drain_delay: 1s}\n"
        "    autoscaling:\n"
        "      min_replicas: 1\n"
        "      max_replicas: 6\n"
        "      target_replica_concurrency: 1\n"
        "      window: 3s\n"
        "      max_upscale_factor: 4\n"
        "      max_downscale_factor: 0.25\n"
        "      upscale_stabilization_period: 0s\n"
        "      downscale_stabilization_period: 5s\n"
    )
    yield root, name, port, prom_port
    remove_project(root, name)


def replicas(name: str) -> list[dict]:
    return [
        c
        for c in containers(name)
        if c["Config"]["Labels"].get("stack.api") == "slow" and c["State"]["Status"] == "running"
    ]


def healthy(root: Path) -> int:
    """Replicas serving, as `stack status` counts them (the controller's probes: Docker runs no check)."""
    shown = stack("status", "--json", "-p", str(root), cwd=root, check=False)
    return int(json.loads(shown.stdout)["apis"][0]["ready"]) if shown.returncode == 0 else 0


def last_decision(root: Path) -> str:
    """The autoscaler's latest reason for the API, as `stack status slow` shows it (its decisions file)."""
    try:
        return str(json.loads((root / ".stack/autoscaler/decisions.json").read_text())["slow"]["last"])
    except (OSError, ValueError, KeyError):
        return ""


def desired_count(root: Path) -> int:
    """The count the controller keeps for the API (what the autoscaler last set)."""
    return int(json.loads((root / ".stack/autoscaler/desired.json").read_text())["slow"]["replicas"])


def autoscaler_logs(name: str) -> str:
    ids = subprocess.run(
        [
            "docker",
            "ps",
            "-aq",
            "--filter",
            f"label=com.docker.compose.project={name}",
            "--filter",
            "label=stack.role=autoscaler",
        ],
        capture_output=True,
        text=True,
    ).stdout.split()
    assert ids, "no autoscaler container"
    result = subprocess.run(["docker", "logs", ids[0]], capture_output=True, text=True)
    return result.stdout + result.stderr


def compose_ps(root: Path, name: str) -> list[dict]:
    out = subprocess.run(
        [
            "docker",
            "compose",
            "-p",
            name,
            "-f",
            str(root / ".stack/plan/compose/compose.yaml"),
            "ps",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def _running(container: str) -> bool:
    out = subprocess.run(["docker", "inspect", "-f", "{{.State.Running}}", container], capture_output=True, text=True)
    return out.stdout.strip() == "true"


def test_load_grows_the_api_idle_shrinks_it_and_scale_force_takes_it(slow_project: tuple[Path, str, int, int]) -> None:
    root, name, port, prom_port = slow_project
    url = f"http://127.0.0.1:{port}/slow"
    stack("up", str(root), cwd=root)
    assert len(replicas(name)) == 1
    prometheus = next(c["Id"] for c in containers(name) if c["Config"]["Labels"].get("stack.role") == "prometheus")

    with Load(url, concurrency=8, max_seconds=240) as load:
        until(lambda: healthy(root) >= 4, "at least 4 healthy replicas under load", 120, every=0.5)
        # The added replicas are Compose's: listed by `docker compose ps`, named and numbered as Compose does.
        services = {c["Service"] for c in compose_ps(root, name) if c["Service"].startswith("slow-")}
        listed = [c for c in compose_ps(root, name) if c["Service"] in services]
        assert len(listed) >= 4, listed
        numbers = sorted(
            int(c["Labels"].split("com.docker.compose.container-number=")[1].split(",")[0]) for c in listed
        )
        assert numbers == list(range(1, len(numbers) + 1)), numbers
        # A second `stack up` keeps the autoscaler's count instead of resetting it to init_replicas.
        grown = len(replicas(name))
        again = stack("up", str(root), cwd=root)
        assert "rolling update" not in again.stderr
        assert len(replicas(name)) >= min(grown, 4)
        time.sleep(2)
    assert load.total > 100 and load.failures == 0, load.codes

    # Prometheus stopped: the controller starts it again (within 10 s) and counts the restart.
    subprocess.run(["docker", "stop", prometheus], capture_output=True, check=True)
    until(lambda: _running(prometheus), "the controller to start Prometheus again", 10, every=0.5)

    def prometheus_restarts() -> int:
        shown = json.loads(stack("status", "--json", "-p", str(root), cwd=root).stdout)
        return int(next(c for c in shown["components"] if c["name"] == "prometheus")["restarts"])

    # counted by the controller's next pass over the containers (within a second or two)
    until(lambda: prometheus_restarts() >= 1, "Prometheus' restart counted", 10, every=0.5)

    # Prometheus hangs: no data, so no scale-down, however long the idle lasts. The count is read once
    # the autoscaler holds on "no data" (before, a decision taken on the last data may still apply).
    subprocess.run(["docker", "pause", prometheus], capture_output=True, check=True)
    try:
        until(lambda: "hold: no data" in last_decision(root), "the autoscaler to hold on no data", 60, every=0.5)
        held = desired_count(root)
        time.sleep(10)  # window 3 s + downscale stabilization 5 s + ticks: idle long enough to shrink, with data
        assert desired_count(root) == held and "hold: no data (Prometheus query failed" in last_decision(root)
    finally:
        # Prometheus answers again and the API is idle: down to min_replicas after the stabilization period.
        subprocess.run(["docker", "unpause", prometheus], capture_output=True, check=True)
    until(lambda: len(replicas(name)) == 1, "the count to return to min_replicas", 120, every=0.5)
    assert requests.post(url, json={}, timeout=10).json() == {"ok": True}

    logs = autoscaler_logs(name)
    assert "scale up 1 -> " in logs and "scale down " in logs and "-> 1 " in logs

    # `stack status slow` shows the decisions; the autoscaler's metrics are in Prometheus.
    detail = stack("status", "slow", "-p", str(root), cwd=root).stdout
    assert "autoscaler:" in detail and "[target] scale down" in detail, detail
    query = f"http://127.0.0.1:{prom_port}/api/v1/query"

    def decisions_up() -> bool:
        result = requests.get(
            query, params={"query": 'sum(stack_autoscaler_decisions_total{api="slow",direction="up"})'}, timeout=5
        ).json()["data"]["result"]
        return bool(result) and float(result[0]["value"][1]) >= 1

    until(decisions_up, "the autoscaler's metrics in Prometheus", 30, every=0.5)

    # `stack scale --force` takes the API from the autoscaler: idle, it would shrink it to 1 after the
    # stabilization period; it holds instead, until the next `stack up` hands it back.
    stack("scale", "slow", "3", "--force", "-p", str(root), cwd=root)
    held = "set by hand with `stack scale --force`"
    until(lambda: held in last_decision(root), "the autoscaler to hold", 30, every=0.5)
    assert len(replicas(name)) == 3
    status = json.loads(stack("status", "--json", "-p", str(root), cwd=root).stdout)["apis"][0]
    assert status["autoscaled"] is False
    stack("up", str(root), cwd=root)
    until(lambda: len(replicas(name)) == 1, "the autoscaler to take the API back and shrink it", 90, every=0.5)

    # `stack down` removes every replica, the added ones too.
    stack("down", str(root), cwd=root)
    assert containers(name) == []
