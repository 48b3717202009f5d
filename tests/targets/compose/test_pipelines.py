"""Pipelines on the real Compose stack: an API calls the next one container to container over the
stack network (the upstreams file the controller writes, mounted read-only), never through the
gateway, with the request id and deadline carried, API keys needed from outside only, a callee at zero
woken by the call, a callee's error and a callee with no replica named in the caller's answer, and the
edge in `stack status`."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cli import stack
from common import free_port
from docker_stack import DOCKER, containers, remove_project
from waits import until

pytestmark = DOCKER

KEY = "k-compose-pipeline"

FRONT = """
class Predictor:
    def __init__(self, config, apis):
        self.apis = apis

    async def predict(self, payload):
        callee = payload.pop("to", "leaf")
        return {"front": await self.apis[callee].apredict(payload, query_params={"from": "front"})}
"""

# The leaf's gated requests wait on an event a second request sets: no shared files across containers.
LEAF = """
import socket, threading
from serving import HTTPError

GATES = {}

class Predictor:
    def predict(self, payload, query_params, headers):
        if payload.get("fail"):
            raise HTTPError(422, "leaf refuses " + payload["fail"])
        if "release" in payload:
            GATES.setdefault(payload["release"], threading.Event()).set()
            return {"released": payload["release"]}
        if "gate" in payload:
            GATES.setdefault(payload["gate"], threading.Event()).wait(60)
        return {
            "leaf": payload,
            "query": dict(query_params),
            "request_id": headers.get("X-Request-ID"),
            "host": headers.get("Host"),
            "forwarded": headers.get("X-Forwarded-Host"),
            "timeout": headers.get("X-Request-Timeout"),
            "hostname": socket.gethostname(),
        }
"""


@pytest.fixture
def project(tmp_path: Path) -> Iterator[tuple[Path, str, int]]:
    root = tmp_path / "chain"
    root.mkdir()
    (root / "front.py").write_text(FRONT)
    (root / "leaf.py").write_text(LEAF)
    name = f"pl{int(time.time() * 1000) % 10**8}"
    port = free_port()
    (root / "stack.yaml").write_text(
        f"project: {name}\ngateway: {{port: {port}, api_keys: [{KEY}]}}\n"
        f"prometheus: {{port: {free_port()}, scrape_interval: 1s}}\n"
        "apis:\n"
        "  - name: front\n    predictor: {path: front.py, timeout: 90s}\n    calls: [leaf, sleepy]\n"
        "  - name: leaf\n    predictor: {path: leaf.py, threads_per_process: 4}\n"
        # Idle, it runs no replica: a call wakes it through the controller's activator.
        "  - name: sleepy\n    predictor: {path: leaf.py}\n"
        "    autoscaling: {min_replicas: 0, max_replicas: 1, idle_timeout: 3s, window: 4s,"
        " downscale_stabilization_period: 2s, upscale_stabilization_period: 0s}\n"
    )
    yield root, name, port
    remove_project(root, name)


def test_a_chain_on_compose(project: tuple[Path, str, int]) -> None:
    root, name, port = project
    stack("up", str(root), cwd=root)

    def post(api: str, body: Any, key: str | None = KEY, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        headers.update(kwargs.pop("headers", {}))
        kwargs.setdefault("timeout", 60)
        return requests.post(f"http://127.0.0.1:{port}/{api}", json=body, headers=headers, **kwargs)

    answer = post("front", {"x": 1}, headers={"X-Request-ID": "compose-trace-1"})
    assert answer.status_code == 200, answer.text
    leaf = answer.json()["front"]
    assert leaf["leaf"] == {"x": 1} and leaf["query"] == {"from": "front"}
    assert leaf["request_id"] == "compose-trace-1" and answer.headers["X-Request-ID"] == "compose-trace-1"
    # Container to container on the stack network: the Host is the leaf container's, no gateway hop.
    assert leaf["forwarded"] is None
    (leaf_container,) = [
        c for c in containers(name) if c["Config"]["Labels"].get("stack.api") == "leaf" and c["State"]["Running"]
    ]
    assert leaf["hostname"] == leaf_container["Config"]["Hostname"]
    host = leaf["host"].rsplit(":", 1)[0]
    networks = leaf_container["NetworkSettings"]["Networks"].values()
    assert host in {n["IPAddress"] for n in networks}
    assert 80 < float(leaf["timeout"]) <= 90  # front's timeout is the chain's deadline
    # The upstreams directory is mounted read-only, and only into APIs that call others.
    mounts = {
        c["Config"]["Labels"]["stack.api"]: c["Mounts"]
        for c in containers(name)
        if "stack.api" in c["Config"]["Labels"]
    }
    assert [m["RW"] for m in mounts["front"] if m["Destination"] == "/stack/upstreams"] == [False]
    assert not [m for m in mounts["leaf"] if m["Destination"] == "/stack/upstreams"]

    # A callee at zero replicas is woken by the call; the caller waits as a client would.
    def api(api_name: str) -> dict[str, Any]:
        apis = json.loads(stack("status", "--json", "-p", str(root), cwd=root).stdout)["apis"]
        return next(a for a in apis if a["name"] == api_name)

    until(lambda: api("sleepy")["status"] == "scaled to zero", "sleepy scaling to zero", timeout=120)
    woken = post("front", {"to": "sleepy", "woken": 1}, timeout=120)
    assert woken.status_code == 200, woken.text
    assert woken.json()["front"]["leaf"] == {"woken": 1}
    until(lambda: api("sleepy")["ready"] == 1, "the woken sleepy replica serving", timeout=60)

    # Keys: the leaf refuses outside callers without one; front's call to it needs none.
    assert post("leaf", {"x": 2}, key=None).status_code == 401

    # A callee's error is the caller's, naming the callee.
    failed = post("front", {"fail": "this"})
    assert failed.status_code == 422 and failed.json()["error"] == "leaf: leaf refuses this"

    # The deadline passed: a client's shorter deadline is the chain's; front answers 504 at it while the
    # leaf still waits.
    try:
        late = post("front", {"gate": "slow"}, headers={"X-Request-Timeout": "2"})
        assert late.status_code == 504, late.text
    finally:
        assert post("leaf", {"release": "slow"}).status_code == 200

    # The edge is counted and `stack status` shows it.
    def edge() -> dict[str, Any] | None:
        calls = json.loads(stack("status", "--json", "-p", str(root), cwd=root).stdout)["calls"]
        found = next((c for c in calls if (c["caller"], c["callee"]) == ("front", "leaf")), None)
        return found if found and (found["calls"] or 0) >= 3 and (found["errors"] or 0) >= 1 else None

    counted = until(edge, "the front → leaf edge in stack status", timeout=60)
    assert counted["calls_per_second"] is not None
    assert "front → leaf" in stack("status", "-p", str(root), cwd=root).stdout

    # No ready leaf: after front's retries a 503 that names it; back when it is.
    stack("scale", "leaf", "0", "--force", "-p", str(root), cwd=root)
    down = post("front", {"x": "while down"})
    assert down.status_code == 503, down.text
    assert down.json()["error"].startswith("leaf: ") and "Retry-After" in down.headers
    stack("scale", "leaf", "1", "--force", "-p", str(root), cwd=root)
    until(lambda: post("front", {"x": "back"}).status_code == 200, "front reaching the new leaf", timeout=60)
