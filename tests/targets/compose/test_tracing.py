"""Tracing on the real Compose stack: images built with OpenTelemetry (tracing is on), a collector on the
host's loopback reached from the containers as the Docker host, the gateway's and the replicas' spans in
one trace across a pipeline call."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from cli import stack
from common import free_port
from docker_stack import DOCKER, remove_project
from otlp import Receiver, Span, start_receiver
from trace_stack import FRONT, LEAF, request_span

pytestmark = DOCKER


@pytest.fixture
def traced(tmp_path: Path) -> Iterator[tuple[Path, str, str, Receiver]]:
    receiver, server = start_receiver()  # on 0.0.0.0: the containers reach it at the Docker host's address
    root = tmp_path / "traced"
    root.mkdir()
    (root / "front.py").write_text(FRONT)
    (root / "leaf.py").write_text(LEAF)
    name = f"tr{int(time.time() * 1000) % 10**8}"
    port = free_port()
    (root / "stack.yaml").write_text(
        f"project: {name}\n"
        f"gateway: {{port: {port}}}\n"
        f"prometheus: {{port: {free_port()}}}\n"
        f"tracing: {{endpoint: {receiver.url}, sample_rate: 1.0}}\n"  # http://127.0.0.1:PORT, as a user writes it
        "apis:\n"
        "  - name: front\n    calls: [leaf]\n    predictor: {path: front.py}\n"
        "  - name: leaf\n    predictor:\n      path: leaf.py\n"
        "      batching: {max_batch_size: 4, batch_interval: 20ms}\n"
    )
    try:
        yield root, name, f"http://127.0.0.1:{port}", receiver
    finally:
        remove_project(root, name)
        server.shutdown()
        server.server_close()


def test_a_trace_on_compose_joins_the_gateway_and_both_replicas(traced: tuple[Path, str, str, Receiver]) -> None:
    root, project, gateway, receiver = traced
    stack("up", str(root), cwd=root)
    answer = requests.post(f"{gateway}/front", json={"word": "bee"}, headers={"X-Request-ID": "ct-1"}, timeout=30)
    assert answer.status_code == 200 and answer.json() == {"front": {"leaf": "BEE"}}, answer.text

    def whole(spans: list[Span]) -> bool:
        # Traefik and each replica export in their own batches: wait until this request's trace is whole.
        fronts = [
            s for s in spans if s.service == f"{project}-front" and s.attributes.get("stack.request_id") == "ct-1"
        ]
        ids = {s.span_id for s in spans}
        return (
            any(s.kind == 2 and s.parent_id in ids for s in fronts)
            and any(s.service == f"{project}-leaf" and s.attributes.get("stack.request_id") == "ct-1" for s in spans)
            and any(s.name == "batch" for s in spans)
        )

    spans = receiver.wait_for(whole, timeout=60)
    front = request_span(spans, "ct-1", f"{project}-front")
    trace = {s.span_id: s for s in receiver.trace(front.trace_id)}
    assert trace[front.parent_id].service == f"{project}-gateway"  # Traefik in its container started it
    call = next(s for s in trace.values() if s.parent_id == front.span_id and s.name == "call leaf")
    leaf = next(s for s in trace.values() if s.service == f"{project}-leaf" and s.kind == 2)
    assert leaf.parent_id == call.span_id and leaf.attributes["stack.request_id"] == "ct-1"
    versions = {
        a["name"]: a["version"] for a in json.loads(stack("status", "--json", "-p", str(root), cwd=root).stdout)["apis"]
    }
    for span, api in ((front, "front"), (leaf, "leaf")):
        assert span.resource["stack.project"] == project and span.resource["stack.api"] == api
        assert span.resource["stack.version"] == versions[api] and span.resource["stack.replica"]
