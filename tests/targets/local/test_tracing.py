"""OpenTelemetry tracing end to end on `stack up --local`: the real Traefik starts or continues the
trace, real replicas continue it (request, queue, batch, predict, post_predict, pipeline calls), and both
export to a real OTLP/HTTP receiver that decodes the protobuf (tests/otlp.py)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from cli import stack
from common import ServerFactory, free_port
from otlp import Receiver, Span, start_receiver
from trace_stack import FRONT, LEAF, one_span, request_span

from stack.spec import SpecError, load_spec

pytestmark = pytest.mark.xdist_group("tracing-local")


def _write(root: Path, port: int, collector: str, rate: float) -> None:
    root.mkdir()
    (root / "front.py").write_text(FRONT)
    (root / "leaf.py").write_text(LEAF)
    (root / "stack.yaml").write_text(
        f"project: traced\n"
        f"gateway: {{port: {port}}}\n"
        f"prometheus: {{enabled: false}}\n"
        f"tracing: {{endpoint: {collector}, sample_rate: {rate}}}\n"
        f"apis:\n"
        f"  - name: front\n"
        f"    calls: [leaf]\n"
        f"    predictor: {{path: front.py}}\n"
        f"  - name: leaf\n"
        f"    predictor:\n"
        f"      path: leaf.py\n"
        f"      batching: {{max_batch_size: 4, batch_interval: 20ms}}\n"
    )


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    collector, server = start_receiver()
    yield collector
    server.shutdown()
    server.server_close()


@pytest.fixture
def traced(tmp_path: Path, receiver: Receiver, request: pytest.FixtureRequest) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "traced"
    port = free_port()
    _write(root, port, receiver.url, request.param)
    stack("up", "--local", str(root), cwd=root)
    yield root, f"http://127.0.0.1:{port}"
    stack("down", "--local", str(root), cwd=root, check=False)


def _has_request(request_id: str, service: str):
    def check(spans: list[Span]) -> bool:
        return any(s.service == service and s.attributes.get("stack.request_id") == request_id for s in spans)

    return check


@pytest.mark.parametrize("traced", [1.0], indirect=True)
def test_a_trace_through_the_gateway_the_queue_the_batch_and_a_call(traced, receiver: Receiver) -> None:
    root, gateway = traced
    answer = requests.post(f"{gateway}/front", json={"word": "ant"}, headers={"X-Request-ID": "t-1"}, timeout=30)
    assert answer.json() == {"front": {"leaf": "ANT"}}
    spans = receiver.wait_for(
        lambda s: (
            _has_request("t-1", "traced-front")(s)
            and any(x.name == "batch" for x in s)
            and any(x.service == "traced-gateway" for x in s)
            and any(x.name == "post_predict" for x in s)
        )
    )
    front = request_span(spans, "t-1", "traced-front")
    trace = receiver.trace(front.trace_id)
    by_id = {s.span_id: s for s in trace}
    # The gateway started the trace; the replica's request span is below Traefik's.
    assert by_id[front.parent_id].service == "traced-gateway", by_id.get(front.parent_id)
    assert any(s.parent_id == "" and s.service == "traced-gateway" for s in trace)
    status = json.loads(stack("status", "--local", "--json", str(root), cwd=root).stdout)
    versions = {a["name"]: a["version"] for a in status["apis"]}
    assert front.resource["stack.project"] == "traced" and front.resource["stack.api"] == "front"
    assert front.resource["stack.replica"] == "front-1" and front.resource["stack.version"] == versions["front"]
    assert front.attributes["http.response.status_code"] == 200 and not front.error
    children = {s.name: s for s in trace if s.parent_id == front.span_id}
    assert {"queue", "predict", "post_predict", "call leaf"} <= set(children), sorted(children)
    assert children["queue"].end_ns <= children["predict"].start_ns
    # The call carried the context: the callee's request span is the call span's child, in the same trace.
    call = children["call leaf"]
    assert call.kind == 3 and call.attributes["stack.callee"] == "leaf"
    leaf = next(s for s in trace if s.service == "traced-leaf" and s.kind == 2)
    assert leaf.parent_id == call.span_id and leaf.resource["stack.replica"] == "leaf-1"
    assert leaf.attributes["stack.request_id"] == "t-1"  # the caller's request id, too
    # The leaf is batched: its wait is a queue span below its request; the batch links to the request.
    assert one_span(trace, name="queue", parent_id=leaf.span_id).end_ns <= leaf.end_ns
    batch = next(s for s in receiver.spans if s.name == "batch" and leaf.span_id in s.links)
    assert batch.attributes["stack.batch.size"] == 1
    assert any(s.name == "predict" and s.parent_id == batch.span_id for s in receiver.spans)

    # An error is recorded on the request's span, with the exception.
    failed = requests.post(f"{gateway}/front", json={"fail": True}, headers={"X-Request-ID": "t-2"}, timeout=30)
    assert failed.status_code == 500
    spans = receiver.wait_for(_has_request("t-2", "traced-front"))
    broken = request_span(spans, "t-2", "traced-front")
    assert broken.error and broken.attributes["http.response.status_code"] == 500
    assert any(s.error and "exception" in s.events for s in receiver.trace(broken.trace_id) if s.name == "predict")


@pytest.mark.parametrize("traced", [0.0], indirect=True)
def test_sample_rate_zero_keeps_a_clients_sampled_traceparent_only(traced, receiver: Receiver) -> None:
    _, gateway = traced
    unsampled = requests.post(f"{gateway}/front", json={"word": "bee"}, headers={"X-Request-ID": "u-1"}, timeout=30)
    assert unsampled.status_code == 200
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    headers = {"X-Request-ID": "s-1", "traceparent": f"00-{trace_id}-{parent}-01"}
    assert requests.post(f"{gateway}/front", json={"word": "cat"}, headers=headers, timeout=30).status_code == 200
    spans = receiver.wait_for(
        lambda s: (
            _has_request("s-1", "traced-front")(s)
            and _has_request("s-1", "traced-leaf")(s)
            and any(x.service == "traced-gateway" for x in s)
        )
    )
    front = request_span(spans, "s-1", "traced-front")
    assert front.trace_id == trace_id  # the client's trace, continued
    entry = [s for s in receiver.trace(trace_id) if s.service == "traced-gateway" and s.parent_id == parent]
    assert entry, "the gateway's span continues the client's"
    assert request_span(spans, "s-1", "traced-leaf").trace_id == trace_id
    # Exports leave each process in order: the unsampled request's spans would have come first.
    assert not any(s.attributes.get("stack.request_id") == "u-1" for s in receiver.spans)
    # Besides the client's trace, only the leaf's batch (a trace of its own, linked to s-1's span).
    leaf = request_span(spans, "s-1", "traced-leaf")
    batches = [s for s in receiver.spans if s.trace_id != trace_id and s.name == "batch"]
    assert [b.links for b in batches] == [(leaf.span_id,)], batches
    others = [(s.service, s.name) for s in receiver.spans if s.trace_id not in {trace_id, batches[0].trace_id}]
    assert not others, others


def test_without_tracing_nothing_of_it_is_imported(servers: ServerFactory, tmp_path: Path) -> None:
    predictor = tmp_path / "modules.py"
    predictor.write_text(
        "import sys\n\n\nclass Predictor:\n    def __init__(self, config):\n        pass\n\n"
        "    def predict(self, payload):\n"
        "        return {'otel': sorted(m for m in sys.modules if m.startswith('opentelemetry'))}\n"
    )
    server = servers.serving(predictor)
    assert server.post(json={}).json() == {"otel": []}


@pytest.mark.parametrize(
    ("block", "line", "message"),
    [
        ("{endpoint: 'localhost:4318'}", 3, "tracing.endpoint: expected an OTLP/HTTP URL like http://127.0.0.1:4318"),
        ("{endpoint: 'http://c:70000'}", 3, "is not one from 1 to 65535"),
        ("{endpoint: 'http://c:4318', sample_rate: 2}", 3, "sample_rate is a fraction from 0 to 1"),
        ("{endpoint: 'http://c:4318', sample_rate: '10%'}", 3, "sample_rate is a fraction from 0 to 1"),
        ("{sample_rate: 0.5}", 3, "tracing.endpoint"),
    ],
)
def test_tracing_errors_name_the_line(tmp_path: Path, block: str, line: int, message: str) -> None:
    (tmp_path / "p.py").write_text("class Predictor:\n    def predict(self, payload):\n        return payload\n")
    (tmp_path / "stack.yaml").write_text(
        f"project: t\n# traces\ntracing: {block}\napis:\n  - name: a\n    predictor: {{path: p.py}}\n"
    )
    with pytest.raises(SpecError) as caught:
        load_spec(tmp_path)
    text = str(caught.value)
    assert f"stack.yaml:{line}:" in text and message in text, text


def test_traces_url_and_the_gateways_flags(tmp_path: Path) -> None:
    from stack.plan.gateway import traefik_tracing_args
    from stack.targets.compose.plan import from_container

    (tmp_path / "p.py").write_text("class Predictor:\n    def predict(self, payload):\n        return payload\n")
    (tmp_path / "stack.yaml").write_text(
        "project: t\ntracing: {endpoint: 'http://127.0.0.1:4318/', sample_rate: 0.25}\n"
        "apis:\n  - name: a\n    predictor: {path: p.py}\n"
    )
    spec = load_spec(tmp_path).spec
    assert spec.tracing is not None and spec.tracing.traces_url == "http://127.0.0.1:4318/v1/traces"
    assert from_container(spec.tracing.traces_url) == "http://host.docker.internal:4318/v1/traces"
    assert "--tracing.sampleRate=0.25" in traefik_tracing_args(spec)
    assert "--tracing.otlp.http.endpoint=http://127.0.0.1:4318/v1/traces" in traefik_tracing_args(spec)


def test_compose_and_nomad_plans_trace_through_the_gateway_and_replicas(tmp_path: Path) -> None:
    """Compose: Traefik's flags point at the Docker host (a collector on its 127.0.0.1), which every
    service maps; Nomad: the endpoint as written. `docker compose config` accepts the file."""
    import shutil
    import subprocess

    import yaml

    from stack.targets.compose.plan import plan as plan_compose
    from stack.targets.nomad.plan import plan as plan_nomad

    root = tmp_path / "traced"
    _write(root, 18080, "http://127.0.0.1:4318", 0.5)
    loaded = load_spec(root)
    compose = plan_compose(loaded, tmp_path / "out")
    document = yaml.safe_load(compose.files["compose.yaml"])
    traefik = document["services"]["traefik"]
    assert "--tracing.otlp.http.endpoint=http://host.docker.internal:4318/v1/traces" in traefik["command"]
    assert (
        "--tracing.sampleRate=0.5" in traefik["command"]
        and "--tracing.serviceName=traced-gateway" in traefik["command"]
    )
    replicas = [s for name, s in document["services"].items() if "STACK_SERVING_CONFIG" in s.get("environment", {})]
    assert len(replicas) == 2
    for service in [traefik, *replicas]:
        assert service["extra_hosts"] == ["host.docker.internal:host-gateway"]
    for service in replicas:
        config = json.loads(service["environment"]["STACK_SERVING_CONFIG"])
        assert config["tracing"]["endpoint"] == "http://host.docker.internal:4318/v1/traces"
        assert config["tracing"]["sample_rate"] == 0.5 and config["tracing"]["project"] == "traced"
        assert config["tracing"]["version"] == service["labels"]["stack.version"]
    if shutil.which("docker"):
        out = tmp_path / "out"
        compose.write(out)
        checked = subprocess.run(
            ["docker", "compose", "-f", str(out / "compose.yaml"), "config", "-q"], capture_output=True, text=True
        )
        assert checked.returncode == 0, checked.stderr

    nomad = plan_nomad(loaded)
    traefik_job = next(text for name, text in nomad.files.items() if name.endswith("traefik.json"))
    assert "--tracing.otlp.http.endpoint=http://127.0.0.1:4318/v1/traces" in traefik_job
    front = json.loads(next(text for name, text in nomad.files.items() if name.endswith("front.json")))
    env = front["Job"]["TaskGroups"][0]["Tasks"][0]["Env"]
    assert json.loads(env["STACK_SERVING_CONFIG"])["tracing"]["endpoint"] == "http://127.0.0.1:4318/v1/traces"


def test_a_traceparent_is_read_for_its_sampled_flag() -> None:
    from serving.tracing import sampled_flag

    trace, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    assert sampled_flag(f"00-{trace}-{parent}-01") is True
    assert sampled_flag(f"00-{trace}-{parent}-03") is True  # other flags beside "sampled"
    assert sampled_flag(f"00-{trace}-{parent}-00") is False
    assert sampled_flag(f" 00-{trace.upper()}-{parent}-01 ") is True
    for bad in ("", "yes", f"00-{trace}-{parent}", f"00-{trace[:-1]}-{parent}-01", f"00-{trace}-{parent}-zz"):
        assert sampled_flag(bad) is None, bad  # not a traceparent: as if there were none
