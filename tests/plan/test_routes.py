"""The gateway's routes (stack.routes) loaded into the real Traefik binary, in front of a real replica.

Through the gateway an API answers its prediction routes only: the replica's
/metrics and probes, in every spelling that reaches the same aiohttp handler,
are the gateway's 404.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml
from common import EXAMPLES, Server, ServerFactory, free_port
from waits import holds, until

from stack import routes
from stack.targets.gateway import answered_by_replica, readiness_url
from stack.targets.local.traefik import traefik_binary, traefik_command

ERRORS_SERVER = (
    "import asyncio, sys\n"
    "from stack.control.gateway_errors import serve_errors\n"
    "async def main():\n"
    "    await serve_errors('127.0.0.1', int(sys.argv[1]))\n"
    "    await asyncio.Event().wait()\n"
    "asyncio.run(main())\n"
)


@pytest.fixture
def gateway(tmp_path: Path, servers: ServerFactory) -> Iterator[tuple[str, Server, Path]]:
    try:
        traefik_binary()
    except Exception as exc:  # StackError naming the extra to install
        pytest.skip(str(exc))
    replica = servers.serving(EXAMPLES / "echo" / "predictor.py", api="echo", api_keys=["sekret-key-1"])
    errors_port = free_port()
    servers.start([sys.executable, "-c", ERRORS_SERVER, str(errors_port)], port=errors_port, wait_ready=False)
    errors_url = f"http://127.0.0.1:{errors_port}"
    until(holds(lambda: requests.get(errors_url, timeout=1).status_code > 0), "the error pages server to answer")
    routes_dir = tmp_path / "routes"
    table = [routes.Route("t-echo", "/echo", (replica.url,)), routes.Route("t-gone", "/gone")]
    table.append(routes.Route("t-broken", "/broken", (f"http://127.0.0.1:{free_port()}",)))  # nothing listens
    routes.write(routes_dir, routes.render(table, errors_url=errors_url))
    port = free_port()
    command = traefik_command("127.0.0.1", port, free_port(), free_port(), routes_dir, tmp_path / "access.log")
    servers.start(command, port=port, wait_ready=False)
    url = f"http://127.0.0.1:{port}"
    until(
        holds(lambda: requests.post(f"{url}/echo", json={}, headers={"X-API-Key": "sekret-key-1"}, timeout=1).ok),
        "Traefik to route /echo to the replica",
    )
    yield url, replica, routes_dir


def test_predictions_pass_and_internal_paths_are_404(gateway: tuple[str, Server, Path]) -> None:
    url, replica, _ = gateway
    key = {"Authorization": "bearer sekret-key-1"}
    assert requests.post(f"{url}/echo", json={"a": 1}, headers=key, timeout=5).json()["payload"] == {"a": 1}
    assert requests.post(f"{url}/echo/predict", json={}, headers=key, timeout=5).status_code == 200
    assert requests.post(f"{url}/echo", json={}, timeout=5).status_code == 401
    assert requests.get(f"{url}/echo", timeout=5).status_code == 401  # the status needs a key too
    assert requests.get(f"{url}/echo", headers=key, timeout=5).json()["status"] == "ready"
    for path in ("metrics", "healthz", "readyz", "/metrics", "metrics/", "//readyz//", "%6detrics", "health%7a"):
        got = requests.get(f"{url}/echo/{path}", headers=key, timeout=5)
        assert got.status_code == 404, (path, got.status_code, got.text[:200])
        assert "predictor_requests" not in got.text
    assert requests.post(f"{url}/echox", json={}, headers=key, timeout=5).status_code == 404
    # On the internal network (the replica itself) they answer, for Prometheus and health checks.
    assert [replica.get(p).status_code for p in ("/metrics", "/healthz", "/readyz")] == [200, 200, 200]


def test_every_answer_of_the_gateway_itself_is_json(gateway: tuple[str, Server, Path]) -> None:
    url, _, _ = gateway
    for path, status in (("/nothing/here", 404), ("/echo/metrics", 404), ("/gone", 503), ("/broken", 502)):
        got = requests.post(url + path, json={}, timeout=10)
        assert got.status_code == status, (path, got.status_code, got.text[:200])
        assert got.headers["Content-Type"].startswith("application/json"), (path, got.headers)
        assert got.json()["error"], path
    assert requests.get(f"{url}/gone", timeout=5).headers["Retry-After"] == "1"
    # A replica's own error passes untouched: the gateway rewrites only what it made itself.
    refused = requests.post(f"{url}/echo", json={}, timeout=5)
    assert refused.status_code == 401 and refused.json()["error"] == "missing or unknown API key"


def test_gateway_readiness_is_a_replica_answer(gateway: tuple[str, Server, Path]) -> None:
    url, _, routes_dir = gateway
    port = int(url.rsplit(":", 1)[1])
    assert answered_by_replica(requests.get(readiness_url(port, "/echo"), timeout=5))  # a 401 from the replica
    routes.write(routes_dir, routes.render([routes.Route("t-echo", "/echo", ())]))  # no replica, no error service
    until(lambda: requests.get(f"{url}/echo", timeout=5).status_code == 503, "Traefik to drop the replica", 10)
    gone = requests.get(readiness_url(port, "/echo"), timeout=5)
    assert gone.status_code == 503 and not answered_by_replica(gone)


def test_the_routes_file_is_plain_traefik_configuration(tmp_path: Path) -> None:
    text = routes.render([routes.Route("p-iris", "/iris", ("http://10.0.0.2:8888",)), routes.Route("p-root", "/")])
    config = yaml.safe_load(text)
    iris = config["http"]["routers"]["p-iris"]
    assert iris["rule"].startswith("(Path(`/iris`) || PathPrefix(`/iris/`)) && !PathRegexp(")
    assert iris["middlewares"] == ["p-iris-strip", "p-iris-retry"]
    assert config["http"]["services"]["p-iris"]["loadBalancer"]["servers"] == [{"url": "http://10.0.0.2:8888"}]
    assert config["http"]["services"]["p-root"]["loadBalancer"]["servers"] == []
    assert routes.write(tmp_path, text) and not routes.write(tmp_path, text)  # unchanged: not rewritten
    assert routes.read_servers(tmp_path) == {"p-iris": ["http://10.0.0.2:8888"], "p-root": []}
    (tmp_path / routes.ROUTES_FILE).write_text(text[: len(text) // 2])  # truncated
    assert routes.read_servers(tmp_path) is None
