"""Traffic splitters on the real Compose stack: weights and shadow traffic through the controller's routes."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cli import stack
from common import EXAMPLES, free_port
from docker_stack import DOCKER, remove_project
from split_stack import check_decided, settled_shares, shares, watch_canaries, write_canary_project, write_spec

from loadgen import Load

pytestmark = DOCKER


@pytest.fixture
def project(tmp_path: Path) -> Iterator[tuple[Path, str, int]]:
    root = tmp_path / "splits"
    shutil.copytree(EXAMPLES / "echo", root, ignore=shutil.ignore_patterns(".stack"))
    name = f"sp{int(time.time() * 1000) % 10**8}"
    port = free_port()
    write_spec(root, port)
    spec = root / "stack.yaml"
    prometheus = f"prometheus: {{port: {free_port()}, scrape_interval: 1s}}\n"
    spec.write_text(spec.read_text().replace("project: splits\n", f"project: {name}\n{prometheus}"))
    yield root, name, port
    remove_project(root, name)


def test_weights_and_live_reweighting_on_compose(project: tuple[Path, str, int]) -> None:
    root, _name, port = project
    url = f"http://127.0.0.1:{port}/iris"
    stack("up", str(root), cwd=root)
    seen = shares(url, 2000)
    assert set(seen) == {"iris-v1", "iris-v2"}
    assert abs(seen["iris-v1"] / sum(seen.values()) - 0.80) <= 0.03, seen
    # `stack status` shows the share each API got over the last minute (the gateway's counters).
    observed = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        observed = json.loads(stack("status", "--json", "-p", str(root), cwd=root).stdout)["splitters"][0]["observed"]
        if observed and abs(observed["iris-v1"] - 0.80) <= 0.03:
            break
        time.sleep(1)
    assert observed and abs(observed["iris-v1"] - 0.80) <= 0.03, observed
    # The mirror got copies of about half of them (its own counters, as `stack status` reads them).
    mirrored = 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        apis = json.loads(stack("status", "--json", "-p", str(root), cwd=root).stdout)["apis"]
        mirrored = next(a for a in apis if a["name"] == "iris-v3").get("2xx") or 0
        if mirrored >= 0.3 * 2000:
            break
        time.sleep(1)
    assert 0.3 * 2000 <= mirrored <= 0.7 * 2000, mirrored

    with Load(url, concurrency=4) as load:
        time.sleep(1)
        stack("split", str(root), "iris", "iris-v1=0", "iris-v2=100", cwd=root)
        time.sleep(1)
    assert load.failures == 0 and load.codes[200] > 50, load.codes
    assert set(settled_shares(url, {"iris-v2"})) == {"iris-v2"}
    splitter = json.loads(stack("status", "--json", "-p", str(root), cwd=root).stdout)["splitters"][0]
    assert splitter["weights"] == {"iris-v1": 0, "iris-v2": 100} and splitter["overridden"]


def test_canaries_on_compose(tmp_path: Path) -> None:
    root = tmp_path / "canaries"
    name = f"cn{int(time.time() * 1000) % 10**8}"
    port, prometheus = free_port(), free_port()
    write_canary_project(root, name, port, extra=f", port: {prometheus}")
    try:
        stack("up", str(root), cwd=root)

        def status() -> dict[str, Any]:
            return json.loads(stack("status", "--json", "-p", str(root), cwd=root).stdout)

        check_decided(watch_canaries(status, port))
        # The controller wrote the routes before the status said so; once Traefik reloaded them every
        # request goes to the baseline.
        assert set(settled_shares(f"http://127.0.0.1:{port}/bad-rollout", {"stable"}, 100)) == {"stable"}
        # The controller's canary metrics reach Prometheus.
        query = 'stack_canary_phase{splitter="bad-rollout",phase="rolled back"}'
        deadline = time.monotonic() + 30
        found: list[Any] = []
        while time.monotonic() < deadline and not found:
            answer = requests.get(f"http://127.0.0.1:{prometheus}/api/v1/query", params={"query": query}, timeout=5)
            found = [r for r in answer.json()["data"]["result"] if r["value"][1] == "1"]
            time.sleep(1)
        assert found, query
    finally:
        remove_project(root, name)
