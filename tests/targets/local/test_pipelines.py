"""Pipelines on `stack up --local`: APIs calling APIs of their stack through the `apis` handle, replica
to replica (never the public port), with the request id, the deadline and the client's leaving carried
along, API keys needed from outside only, callees woken from zero, killed callees answered 503 naming
them, and each edge counted (`predictor_calls_total`, `stack status`)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cli import stack
from common import free_port
from waits import until

pytestmark = pytest.mark.xdist_group("pipelines-local")

KEY = "k-pipeline-secret"

FRONT = """
class Predictor:
    def __init__(self, config, apis):
        self.apis = apis

    async def predict(self, payload):
        if payload.get("to") == "undeclared":
            return self.apis["leaf"]  # front may call middle, pool and sleepy only
        answer = await self.apis[payload["to"]].apredict(payload.get("body"))
        return {"front": answer}
"""

MIDDLE = """
class Predictor:
    def __init__(self, config, apis):
        self.leaf = apis["leaf"]
        self.apis = apis

    def predict(self, payload):
        if isinstance(payload, dict) and "to" in payload:
            return {"middle": self.apis[payload["to"]].predict(payload["body"])}
        if isinstance(payload, dict) and payload.get("stream"):
            return {"items": list(self.leaf.predict(payload))}
        return {"middle": self.leaf.predict(payload, query_params={"from": "middle"})}
"""

LEAF = """
import json, os, pathlib, time
from serving import HTTPError

class Predictor:
    def __init__(self, config):
        self.out = pathlib.Path(config["out"])
        deadline = time.monotonic() + 120
        while (self.out / "hold-leaf-init").exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def predict(self, payload, query_params, headers):
        if isinstance(payload, dict):
            if payload.get("fail"):
                raise HTTPError(422, "leaf refuses " + payload["fail"])
            if payload.get("stream"):
                return (item for item in ["a", "b", {"n": 3}])
            if "gate" in payload:
                (self.out / (payload["gate"] + ".started")).write_text(headers.get("X-Request-Timeout") or "none")
                deadline = time.monotonic() + 60
                while not (self.out / (payload["gate"] + ".release")).exists() and time.monotonic() < deadline:
                    time.sleep(0.02)
        with open(self.out / "leaf-ran.jsonl", "a") as ran:
            ran.write(json.dumps(payload) + "\\n")
        return {
            "leaf": payload,
            "query": dict(query_params),
            "request_id": headers.get("X-Request-ID"),
            "host": headers.get("Host"),
            "forwarded": headers.get("X-Forwarded-Host"),
            "timeout": headers.get("X-Request-Timeout"),
        }
"""

POOL = """
import os

class Predictor:
    def predict(self, payload):
        return {"pid": os.getpid(), "echo": payload}
"""


class Pipeline:
    def __init__(self, root: Path, port: int, out: Path) -> None:
        self.root, self.port, self.out = root, port, out

    def post(self, api: str, body: Any, key: str | None = KEY, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        headers.update(kwargs.pop("headers", {}))
        kwargs.setdefault("timeout", 60)
        return requests.post(f"http://127.0.0.1:{self.port}/{api}", json=body, headers=headers, **kwargs)

    def status(self) -> dict[str, Any]:
        return json.loads(stack("status", "--local", "--json", "-p", str(self.root), cwd=self.root).stdout)

    def api(self, name: str) -> dict[str, Any]:
        return next(a for a in self.status()["apis"] if a["name"] == name)

    def replica_metrics(self, api: str) -> str:
        (replica,) = [r for r in self.api(api)["replicas"] if r["state"] == "ready"]
        return requests.get(f"http://127.0.0.1:{replica['port']}/metrics", timeout=5).text

    def until(self, check: Callable[[], Any], what: str, timeout: float = 60) -> Any:
        return until(check, what, timeout)

    def ran(self) -> list[Any]:
        path = self.out / "leaf-ran.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def pipe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    if shutil.which("prometheus") is None:
        pytest.skip("scale to zero and the call graph's numbers come from Prometheus (Debian's prometheus)")
    root = tmp_path_factory.mktemp("pipes")
    out = root / "out"
    out.mkdir()
    for name, text in (("front", FRONT), ("middle", MIDDLE), ("leaf", LEAF), ("pool", POOL)):
        (root / f"{name}.py").write_text(text)
    port = free_port()
    (root / "stack.yaml").write_text(
        f"project: pipes\ngateway: {{port: {port}, api_keys: [{KEY}]}}\n"
        f"prometheus: {{port: {free_port()}, scrape_interval: 1s}}\n"
        "apis:\n"
        "  - name: front\n    predictor: {path: front.py, timeout: 3s}\n    calls: [middle, pool]\n"
        "  - name: middle\n    predictor: {path: middle.py, threads_per_process: 4}\n    calls: [leaf, sleepy]\n"
        f"  - name: leaf\n    predictor: {{path: leaf.py, config: {{out: {out}}}}}\n"
        # One replica, always: the no-ready-replica test kills it (the autoscaler must not add one).
        "    autoscaling: {min_replicas: 1, max_replicas: 1}\n"
        "  - name: pool\n    predictor: {path: pool.py}\n    autoscaling: {min_replicas: 2, max_replicas: 2}\n"
        "  - name: sleepy\n    predictor: {path: pool.py}\n"
        "    autoscaling: {min_replicas: 0, max_replicas: 1, idle_timeout: 3s, window: 4s,"
        " downscale_stabilization_period: 2s, upscale_stabilization_period: 0s}\n"
    )
    stack("up", "--local", str(root), cwd=root)
    yield Pipeline(root, port, out)
    for gate in out.glob("*.started"):
        (out / gate.name.replace(".started", ".release")).write_text("go")
    stack("down", "--local", str(root), cwd=root, check=False)


def test_a_chain_runs_replica_to_replica_with_the_clients_request_id(pipe: Pipeline) -> None:
    answer = pipe.post("front", {"to": "middle", "body": {"x": 1}}, headers={"X-Request-ID": "trace-me-7"})
    assert answer.status_code == 200, answer.text
    leaf = answer.json()["front"]["middle"]
    assert leaf["leaf"] == {"x": 1} and leaf["query"] == {"from": "middle"}
    assert leaf["request_id"] == "trace-me-7"  # the caller's id is the callee's
    assert answer.headers["X-Request-ID"] == "trace-me-7"
    # Straight to the leaf's replica: not through the gateway's port (which sets X-Forwarded-Host).
    assert leaf["forwarded"] is None
    assert leaf["host"] != f"127.0.0.1:{pipe.port}"
    ports = {r["port"] for r in pipe.api("leaf")["replicas"]}
    assert int(leaf["host"].rsplit(":", 1)[1]) in ports
    # front's timeout (3s) is the whole chain's deadline: middle has none of its own, and passes on what is left.
    assert 0 < float(leaf["timeout"]) <= 3.0
    direct = pipe.post("middle", {"x": 1}).json()["middle"]
    assert direct["timeout"] is None  # called without a deadline, none is made up


def test_outside_callers_need_a_key_internal_calls_do_not(pipe: Pipeline) -> None:
    refused = pipe.post("leaf", {"x": 2}, key=None)
    assert refused.status_code == 401, refused.text
    assert pipe.post("leaf", {"x": 2}, key="wrong").status_code == 401
    assert pipe.post("middle", {"x": 2}).status_code == 200  # middle's own call to leaf carries no user key


def test_calls_are_balanced_across_the_callees_replicas(pipe: Pipeline) -> None:
    pids = {r["pid"] for r in pipe.api("pool")["replicas"]}
    assert len(pids) == 2
    seen = {pipe.post("front", {"to": "pool", "body": i}).json()["front"]["pid"] for i in range(30)}
    assert seen == pids


def test_a_callees_error_raises_http_error_naming_it(pipe: Pipeline) -> None:
    answer = pipe.post("middle", {"fail": "this input"})
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"] == "leaf: leaf refuses this input"
    through_two = pipe.post("front", {"to": "middle", "body": {"fail": "twice"}})
    assert through_two.status_code == 422
    assert through_two.json()["error"] == "middle: leaf: leaf refuses twice"


def test_calling_an_api_not_in_calls_is_a_clear_error(pipe: Pipeline) -> None:
    answer = pipe.post("front", {"to": "undeclared"})
    assert answer.status_code == 500
    error = answer.json()["error"]
    assert "calls" in error and "'leaf'" in error and "(middle, pool)" in error


def test_a_streaming_callee_is_an_iterator(pipe: Pipeline) -> None:
    answer = pipe.post("middle", {"stream": True})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"items": ["a", "b", {"n": 3}]}


def test_the_callers_deadline_travels_and_the_callee_stops_at_it(pipe: Pipeline) -> None:
    answer = pipe.post("front", {"to": "middle", "body": {"gate": "deadline"}})
    try:
        assert answer.status_code == 504, answer.text
        sent = float((pipe.out / "deadline.started").read_text())
        assert 0 < sent <= 3.0  # front's timeout, less what had passed when middle called leaf
        # The leaf answered 504 at the deadline itself, while its predict still ran: nobody waits on it.
        pipe.until(lambda: 'code="504"' in pipe.replica_metrics("leaf"), "the leaf's 504")
    finally:
        (pipe.out / "deadline.release").write_text("go")


def test_a_client_going_away_drops_the_calls_made_for_it(pipe: Pipeline) -> None:
    holder = threading.Thread(target=pipe.post, args=("leaf", {"gate": "busy"}), daemon=True)
    holder.start()  # the leaf's one thread is busy: the next call to it waits in its queue
    pipe.until(lambda: (pipe.out / "busy.started").exists(), "the gated leaf request")
    body = json.dumps({"marker": "abandoned"}).encode()
    client = socket.create_connection(("127.0.0.1", pipe.port))
    client.sendall(
        b"POST /middle HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    try:
        pipe.until(lambda: 'predictor_queue_length{api="leaf"} 1.0' in pipe.replica_metrics("leaf"), "queued")
    finally:
        client.close()  # the client goes away while middle waits on the leaf
    pipe.until(lambda: 'code="499"' in pipe.replica_metrics("middle"), "middle dropping its call")
    time.sleep(0.3)  # the closed connection reaching the leaf (loopback)
    (pipe.out / "busy.release").write_text("go")
    holder.join(30)
    pipe.until(lambda: 'code="499"' in pipe.replica_metrics("leaf"), "the leaf skipping the abandoned request")
    assert {"marker": "abandoned"} not in pipe.ran()  # its predict never ran: nobody would have read it


def test_a_callee_at_zero_is_woken_by_the_call(pipe: Pipeline) -> None:
    pipe.until(lambda: pipe.api("sleepy")["status"] == "scaled to zero", "sleepy scaling to zero", timeout=90)
    answer = pipe.post("middle", {"to": "sleepy", "body": {"wake": 1}}, timeout=120)
    assert answer.status_code == 200, answer.text
    assert answer.json()["middle"]["echo"] == {"wake": 1}
    pipe.until(lambda: pipe.api("sleepy")["ready"] == 1, "the woken replica serving")


def test_a_callee_with_no_ready_replica_is_a_503_naming_it(pipe: Pipeline) -> None:
    (pipe.out / "hold-leaf-init").write_text("")  # its replacement will wait in __init__
    try:
        (replica,) = pipe.api("leaf")["replicas"]
        os.kill(replica["pid"], signal.SIGKILL)
        pipe.until(lambda: any(r["pid"] != replica["pid"] for r in pipe.api("leaf")["replicas"]), "a replacement")
        answer = pipe.post("middle", {"x": "while down"})
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"].startswith("leaf: ")
        assert "Retry-After" in answer.headers
    finally:
        (pipe.out / "hold-leaf-init").unlink()
    pipe.until(lambda: pipe.post("middle", {"x": "back"}).status_code == 200, "the leaf back", timeout=60)


def test_each_edge_is_counted_and_stack_status_shows_the_graph(pipe: Pipeline) -> None:
    for _ in range(3):
        assert pipe.post("front", {"to": "middle", "body": {"n": 1}}).status_code == 200
    assert pipe.post("middle", {"fail": "counted"}).status_code == 422
    metrics = pipe.replica_metrics("front")
    assert 'predictor_calls_total{api="front",callee="middle",code="200"}' in metrics
    assert 'predictor_call_duration_seconds_count{api="front",callee="middle"}' in metrics

    def edges() -> dict[tuple[str, str], dict[str, Any]] | None:
        calls = {(c["caller"], c["callee"]): c for c in pipe.status()["calls"]}
        counted = (calls[("front", "middle")]["calls"] or 0) >= 3 and (calls[("middle", "leaf")]["errors"] or 0) >= 1
        return calls if counted else None

    graph = pipe.until(edges, "the edges' counts in stack status")
    assert set(graph) == {("front", "middle"), ("front", "pool"), ("middle", "leaf"), ("middle", "sleepy")}
    assert graph[("front", "middle")]["calls_per_second"] is not None
    table = stack("status", "--local", "-p", str(pipe.root), cwd=pipe.root).stdout
    assert "front → middle" in table and "middle → leaf" in table
