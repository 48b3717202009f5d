"""Scale to zero on the Nomad target, as a contract test: the schema-checking stand-in of Nomad's
HTTP API, a real replica process for the woken instance, the real activator and its Nomad waker."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import aiohttp
import yaml
from common import EXAMPLES, ServerFactory, free_port
from nomad_standin import NomadStandIn

from nomad_schema import schema_errors
from stack.control.activator import Activator
from stack.control.autoscale.config import config_of
from stack.control.gateway_errors import serve_errors
from stack.spec import load_spec
from stack.targets.nomad.activation import NomadWaker
from stack.targets.nomad.connection import NomadSettings
from stack.targets.nomad.plan import plan as plan_nomad


def zero_project(tmp_path: Path) -> Path:
    root = tmp_path / "echo"
    shutil.copytree(EXAMPLES / "echo", root, ignore=shutil.ignore_patterns(".stack"))
    spec = root / "stack.yaml"
    spec.write_text(
        "project: nz\napis:\n  - name: echo\n    predictor: {path: predictor.py}\n"
        "    autoscaling: {min_replicas: 0, max_replicas: 3, idle_timeout: 1m}\n"
    )
    return root


def test_the_plan_routes_an_api_at_zero_to_the_activator(tmp_path: Path) -> None:
    plan = plan_nomad(load_spec(zero_project(tmp_path)))
    for name, text in plan.files.items():
        if name.endswith(".json"):
            assert schema_errors(json.loads(text)) == [], name
    api = json.loads(plan.files["nz-echo.json"])["Job"]
    assert api["TaskGroups"][0]["Scaling"]["Min"] == 0 and api["TaskGroups"][0]["Count"] == 1
    autoscaler = json.loads(plan.files["nz-autoscaler.json"])["Job"]["TaskGroups"][0]
    assert autoscaler["Services"][1]["Name"] == "nz-activator"
    assert "--activator-port" in autoscaler["Tasks"][0]["Config"]["args"]
    traefik = json.loads(plan.files["nz-traefik.json"])["Job"]["TaskGroups"][0]["Tasks"][0]
    assert "--providers.file.directory=/local/routes" in traefik["Config"]["args"]
    routes = yaml.safe_load(traefik["Templates"][0]["EmbeddedTmpl"])
    router = routes["http"]["routers"]["nz-echo-zero"]
    assert router["priority"] == 1 and router["service"] == "nz-activator@nomad"
    assert routes["http"]["middlewares"]["nz-echo-zero-activate"] == {"addPrefix": {"prefix": "/__stack/activate/echo"}}


def test_a_request_at_zero_sets_the_count_to_one_and_is_answered(tmp_path: Path, servers: ServerFactory) -> None:
    root = zero_project(tmp_path)
    loaded = load_spec(root)
    standin = NomadStandIn().start()
    try:
        plan = plan_nomad(loaded, nomad_addr=standin.address)
        client = NomadSettings.from_env(standin.address).client()
        job = json.loads(plan.files["nz-echo.json"])["Job"]
        job["TaskGroups"][0]["Count"] = 0  # the autoscaler scaled it to zero
        client.jobs.request(method="post", json={"Job": job})
        for _ in range(10):  # its (empty) deployment settles, as `stack up --nomad` waits for it
            if client.job.request("nz-echo", "deployment", method="get").json()["Status"] == "successful":
                break
        waker = NomadWaker(config_of(loaded), client)
        replica = servers.serving(EXAMPLES / "echo" / "predictor.py", api="echo")

        async def scenario() -> tuple[int, dict, float]:
            port = free_port()
            activator = Activator(waker, timeout=30)
            runner = await serve_errors("127.0.0.1", port, activator)
            try:
                async with aiohttp.ClientSession() as session:
                    url = f"http://127.0.0.1:{port}/__stack/activate/echo/?x=1"
                    request = asyncio.ensure_future(session.post(url, json={"woken": True}))
                    # Nomad places the allocation; its service registration appears once it runs.
                    for _ in range(200):
                        scaled = [r for r in standin.requests if r[:2] == ("POST", "/v1/job/nz-echo/scale")]
                        if scaled:
                            break
                        await asyncio.sleep(0.05)
                    registration = {
                        "ServiceName": "nz-echo",
                        "Address": "127.0.0.1",
                        "Port": replica.port,
                        "JobID": "nz-echo",
                        "Namespace": "default",
                    }
                    standin.service_registrations["nz-echo"] = [registration]
                    response = await request
                    body = await response.json()
                    count = scaled[0][2]["Count"] if scaled else -1
                    return response.status, body, count
            finally:
                await runner.cleanup()
                await activator.close()
                if waker.session is not None:
                    await waker.session.close()

        status, body, count = asyncio.run(scenario())
        assert count == 1
        assert status == 200 and body == {"greeting": "echo", "payload": {"woken": True}, "query": {"x": "1"}}
        assert standin.problems == []
    finally:
        standin.stop()
