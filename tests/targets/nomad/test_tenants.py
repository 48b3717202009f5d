"""Named keys (gateway.keys) on the Nomad target, as a contract test: the planned jobs validate against Nomad's
OpenAPI file; the real Traefik with the planned flags reads the API's tags from the stand-in's catalogue and the
auth middlewares from the Traefik job's template (rendered as Nomad would, with the controller's address);
the controller's real decision code answers it; the replica releases its lease to it."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import requests
from aiohttp import web
from common import ServerFactory, free_port
from nomad_gateway import start_gateway
from nomad_standin import NomadStandIn
from waits import until

from nomad_schema import schema_errors
from serving.keys import parse_keys
from stack.control.autoscale.config import config_of
from stack.control.liveness import Liveness
from stack.control.tenants import Tenants, routers_of, tenant_routes
from stack.plan.serving import api_keys_text
from stack.spec import load_spec
from stack.targets.local.traefik import traefik_binary
from stack.targets.nomad.adapters import LEASE_GRACE
from stack.targets.nomad.api import NomadApi
from stack.targets.nomad.connection import NomadSettings
from stack.targets.nomad.fleet import NomadFleet, asked
from stack.targets.nomad.plan import plan as plan_nomad

PREDICTOR = """
import threading
import time


class Predictor:
    def __init__(self, config):
        self.gate = config["gate"]

    def predict(self, payload):
        import os
        if payload.get("hold"):
            deadline = time.monotonic() + 30
            while not os.path.exists(self.gate) and time.monotonic() < deadline:
                time.sleep(0.01)
        return {"ok": True}
"""
GOLD, ONE = "gold-key-0123456789abcdef", "one-key-0123456789abcdef"


@pytest.fixture
def controller() -> Iterator[tuple[str, list[Tenants]]]:
    """The controller's gateway-facing app (tenant_routes) in a thread; the test sets its Tenants."""
    holder: list[Tenants] = []
    loop = asyncio.new_event_loop()
    port = free_port()
    ready = threading.Event()

    async def serve() -> web.AppRunner:
        app = web.Application()

        async def auth(request: web.Request) -> web.StreamResponse:
            return await tenant_routes(holder[0])[0].handler(request)  # type: ignore[misc]

        async def release(request: web.Request) -> web.StreamResponse:
            return await tenant_routes(holder[0])[1].handler(request)  # type: ignore[misc]

        app.router.add_route("*", "/__stack/auth/{router}", auth)
        app.router.add_post("/__stack/release/{lease}", release)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner

    def run() -> None:
        asyncio.set_event_loop(loop)
        runner = loop.run_until_complete(serve())
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(10)
    yield f"http://127.0.0.1:{port}", holder
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def test_the_gateway_asks_the_controller_on_nomad(
    tmp_path: Path,
    servers: ServerFactory,
    standin: NomadStandIn,
    controller: tuple[str, list[Tenants]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    try:
        traefik_binary()
    except Exception as exc:
        pytest.skip(str(exc))
    monkeypatch.setenv("GOLD_KEY", GOLD)
    monkeypatch.setenv("ONE_KEY", ONE)
    root = tmp_path / "nk"
    root.mkdir()
    (root / "predictor.py").write_text(PREDICTOR)
    gate = root / "gate"
    (root / "stack.yaml").write_text(
        "project: nk\ntarget: nomad\n"
        "gateway:\n  keys:\n"
        '    - {name: gold, key: "${GOLD_KEY}", apis: [alpha]}\n'
        '    - {name: one, key: "${ONE_KEY}", concurrency: 1}\n'
        "apis:\n"
        f"  - name: alpha\n    predictor: {{path: predictor.py, threads_per_process: 2, config: {{gate: {gate}}}}}\n"
        f"  - name: beta\n    predictor: {{path: predictor.py, config: {{gate: {gate}}}}}\n"
    )
    loaded = load_spec(root)
    plan = plan_nomad(loaded, nomad_addr=standin.address)
    jobs = {name: json.loads(text) for name, text in plan.files.items() if name.endswith(".json")}
    for name, job in jobs.items():
        assert schema_errors(job) == [], name
    alpha = jobs["nk-alpha.json"]["Job"]
    tags = alpha["TaskGroups"][0]["Services"][0]["Tags"]
    assert "traefik.http.routers.nk-alpha.middlewares=nk-alpha-auth@file,nk-alpha-strip,nk-alpha-retry" in tags
    templates = alpha["TaskGroups"][0]["Tasks"][0]["Templates"]
    leases = next(t for t in templates if t["DestPath"] == "local/leases.env")
    assert leases["Envvars"] and 'nomadService "nk-activator"' in leases["EmbeddedTmpl"]
    controller_job = jobs["nk-autoscaler.json"]["Job"]
    assert any(s["Name"] == "nk-activator" for g in controller_job["TaskGroups"] for s in g.get("Services") or [])
    traefik = jobs["nk-traefik.json"]["Job"]["TaskGroups"][0]["Tasks"][0]
    auth = next(t for t in traefik["Templates"] if t["DestPath"].endswith("routes/auth.yml"))

    # What Nomad's template renders, with the controller's address; the real Traefik reads it.
    url, holder = controller
    address_template = "[[ range nomadService `nk-activator` ]][[ .Address ]]:[[ .Port ]][[ end ]]"
    routes_dir = tmp_path / "routes"
    routes_dir.mkdir()
    (routes_dir / "auth.yml").write_text(auth["EmbeddedTmpl"].replace(f"http://{address_template}", url))
    keys_file = tmp_path / "keys"
    keys_file.write_text(api_keys_text(loaded))
    # as the Nomad controller's adapters make it
    holder.append(Tenants(lambda: parse_keys(keys_file.read_text()), routers_of(config_of(loaded)), grace=LEASE_GRACE))
    monkeypatch.setenv("STACK_LEASES_URL", url)  # what the leases template renders into the replica
    replicas = {}
    for api in ("alpha", "beta"):
        job = jobs[f"nk-{api}.json"]["Job"]
        env = job["TaskGroups"][0]["Tasks"][0]["Env"]
        config = json.loads(env["STACK_SERVING_CONFIG"])
        replicas[api] = servers.serving(
            root / "predictor.py",
            api=api,
            config={"gate": str(gate)},
            threads_per_process=2,
            api_keys_file=str(keys_file),
            leases_url=config["leases_url"],
        )
        standin.service_registrations[f"nk-{api}"] = [
            {
                "ID": f"_nomad-task-{api}",
                "ServiceName": f"nk-{api}",
                "Namespace": "default",
                "JobID": f"nk-{api}",
                "AllocID": f"alloc-{api}",
                "NodeID": "node-1",
                "Datacenter": "dc1",
                "Tags": job["TaskGroups"][0]["Services"][0]["Tags"],
                "Address": "127.0.0.1",
                "Port": replicas[api].port,
            }
        ]
    gateway = start_gateway(plan, standin, routes_dir, servers, "nk")

    def post(api: str, key: str | None, hold: bool = False) -> requests.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return requests.post(f"{gateway}/{api}", json={"hold": hold}, headers=headers, timeout=30)

    def routed() -> bool:
        try:
            return post("alpha", GOLD).status_code == 200
        except requests.ConnectionError:  # Traefik still starting
            return False

    def seen() -> str:
        try:
            answer = post("alpha", GOLD)
        except requests.ConnectionError as exc:
            return f"Traefik routing alpha through the controller: {exc}"
        return f"Traefik routing alpha through the controller: {answer.status_code} {answer.text[:200]}"

    until(routed, seen, 30)
    assert post("alpha", None).status_code == 401
    forbidden = post("beta", GOLD)
    assert forbidden.status_code == 403 and forbidden.json()["key"] == "gold"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        held = [pool.submit(post, "alpha", ONE, True)]

        def holding() -> bool:
            if held[0].done():
                held[0] = pool.submit(post, "alpha", ONE, True)
            return post("beta", ONE).status_code == 429

        until(holding, "one's second request refused while its first is in flight", 15)
        gate.write_text("go")
        assert held[0].result().status_code == 200
    # released by the replica before its answer: back to back, never refused
    assert [post("beta", ONE).status_code for _ in range(10)] == [200] * 10

    # An allocation that dies holding a lease: in a stack with named keys the controller's fleet lists every
    # API's allocations from the catalogue and asks each which leases it holds; the dead one's lease is let
    # go once every allocation still answering has said it does not hold it (within LEASE_GRACE, not LEASE_TTL).
    tenants = holder[0]
    fleet = NomadFleet(NomadApi(NomadSettings.from_env(standin.address)), "nk")

    async def replace(*_: object) -> None:
        raise AssertionError("Nomad replaces its own allocations: the controller never does")

    liveness = Liveness(fleet.probe_targets, replace, on_leases=lambda r, leases: tenants.seen(r.url, leases))

    async def control_pass() -> None:  # what the controller's fleet and probes do every 2 s
        await asyncio.to_thread(fleet.registered, asked([], ["alpha", "beta"], keyed=True))
        async with aiohttp.ClientSession() as session:
            for health in liveness.health.values():
                health.asked = 0.0
            await liveness.tick(session)

    gate.unlink()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        doomed = pool.submit(post, "alpha", ONE, True)  # held at the gate, its lease with it
        until(lambda: tenants.in_flight("one") == 1, "one's request to hold its lease", 15)
        asyncio.run(control_pass())  # alpha says it holds the lease
        replicas["alpha"].proc.kill()
        with contextlib.suppress(requests.RequestException):
            doomed.result(30)  # the gateway's error: its allocation died under it
    assert post("beta", ONE).status_code == 429  # the lease outlived its request

    def let_go() -> bool:
        asyncio.run(control_pass())
        return tenants.in_flight("one") == 0

    until(let_go, "the dead allocation's lease let go", LEASE_GRACE + 30)
    assert post("beta", ONE).status_code == 200
    assert standin.problems == []


def test_the_controller_asks_every_allocation_only_where_it_must() -> None:
    """Affinity APIs' allocations always (what they hold routes the values); every API's once named keys may
    hold leases on them (a lease is let go only when every allocation answering says it does not hold it)."""
    assert asked(["models"], ["models", "other"], keyed=False) == ["models"]
    assert asked(["models"], ["models", "other"], keyed=True) == ["models", "other"]
    assert asked([], ["alpha"], keyed=False) == []
