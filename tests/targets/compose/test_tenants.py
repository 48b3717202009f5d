"""Named keys (gateway.keys) on the Compose target: the controller container decides for the real Traefik, the
replicas release leases to it, `stack usage` reads the stack's Prometheus; a key's limits change with
`stack up` without a restart or a failed request."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from cli import stack
from common import free_port
from docker_stack import DOCKER, containers, remove_project
from waits import until

from loadgen import Load

pytestmark = DOCKER

PREDICTOR = """
class Predictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        return {"ok": True}
"""
GOLD, BULK = "gold-key-0123456789abcdef", "bulk-key-0123456789abcdef"


def _write(root: Path, name: str, port: int, prom: int, bulk_rate: str) -> None:
    (root / "stack.yaml").write_text(
        f"project: {name}\n"
        f"prometheus: {{port: {prom}, scrape_interval: 1s}}\n"
        f"gateway:\n  port: {port}\n"
        "  keys:\n"
        '    - {name: gold, key: "${GOLD_KEY}", priority: high}\n'
        f'    - {{name: bulk, key: "${{BULK_KEY}}", rate: {bulk_rate}, burst: 1, priority: low, apis: [alpha]}}\n'
        "apis:\n"
        "  - name: alpha\n    predictor: {path: predictor.py}\n    autoscaling: {min_replicas: 2, max_replicas: 2}\n"
        "  - name: beta\n    predictor: {path: predictor.py}\n"
    )


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, str, int, int]]:
    monkeypatch.setenv("GOLD_KEY", GOLD)
    monkeypatch.setenv("BULK_KEY", BULK)
    root = tmp_path / "tenants"
    root.mkdir()
    (root / "predictor.py").write_text(PREDICTOR)
    name = f"tn{int(time.time() * 1000) % 10**8}"
    port, prom = free_port(), free_port()
    _write(root, name, port, prom, "1/m")
    yield root, name, port, prom
    remove_project(root, name)


def _post(url: str, key: str | None) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return requests.post(url, json={}, headers=headers, timeout=30)


def test_keys_are_limited_by_the_controller_and_change_without_a_restart(
    project: tuple[Path, str, int, int],
) -> None:
    root, name, port, prom = project
    stack("up", str(root), cwd=root)
    alpha, beta = f"http://127.0.0.1:{port}/alpha", f"http://127.0.0.1:{port}/beta"
    assert _post(alpha, GOLD).status_code == 200 and _post(beta, GOLD).status_code == 200
    assert _post(alpha, "nope-0123456789abcdef").status_code == 401
    assert _post(beta, BULK).status_code == 403
    assert _post(alpha, BULK).status_code == 200  # its one token (1/m, burst 1)
    limited = _post(alpha, BULK)
    assert limited.status_code == 429 and limited.json() == {
        "error": "key bulk is over its rate (1/m, burst 1)",
        "key": "bulk",
        "limit": "rate",
    }
    assert 1 <= int(limited.headers["Retry-After"]) <= 60

    # A faster rate for bulk, applied by `stack up` while gold's traffic runs: no replica restarts, no
    # request of gold fails, and bulk's new rate holds when `stack up` returns.
    started = {c["Name"]: c["State"]["StartedAt"] for c in containers(name) if "alpha" in c["Name"]}
    _write(root, name, port, prom, "100/s")
    with Load(alpha, headers={"Authorization": f"Bearer {GOLD}"}) as load:
        stack("up", str(root), cwd=root)
    assert load.total > 20 and load.failures == 0, load.codes
    until(lambda: _post(alpha, BULK).status_code == 200, "bulk's new rate applied", 10)
    assert {c["Name"]: c["State"]["StartedAt"] for c in containers(name) if "alpha" in c["Name"]} == started

    def used() -> dict | None:
        shown = json.loads(stack("usage", "--json", "-p", str(root), cwd=root).stdout)
        rows = {(k["name"], k["api"]): k for k in shown["keys"]}
        bulk, gold = rows.get(("bulk", "alpha"), {}), rows.get(("gold", "alpha"), {})
        counted = gold.get("requests", 0) >= load.total + 1 and ("bulk", "beta") in rows
        return rows if counted and bulk.get("rate_limited", 0) >= 1 else None

    rows = until(used, "stack usage counting every request and refusal", 30)
    assert rows[("bulk", "beta")]["forbidden"] == 1
    assert rows[("gold", "alpha")]["bytes_out"] > 0
