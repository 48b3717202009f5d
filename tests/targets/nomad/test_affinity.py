"""Model affinity on the Nomad target, as a contract test: the stand-in's service catalogue lists real replicas
under the planned job's tags, the controller's fleet reads it and asks each replica what it holds, and the
real Traefik routes each value by the routers the controller writes into the gateway's variable."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
from pathlib import Path

import aiohttp
import pytest
import requests
from common import ServerFactory
from nomad_gateway import render_variable, start_gateway
from nomad_standin import NomadStandIn
from waits import until

from stack.control.autoscale.config import config_of
from stack.control.liveness import Liveness
from stack.control.routing import GatewayRoutes
from stack.spec import load_spec
from stack.targets.local.traefik import traefik_binary
from stack.targets.nomad.adapters import NomadRouteSink
from stack.targets.nomad.api import NomadApi
from stack.targets.nomad.connection import NomadSettings
from stack.targets.nomad.fleet import NomadFleet
from stack.targets.nomad.plan import plan as plan_nomad
from stack.targets.nomad.routes import affinity_variable
from stack.targets.nomad.splits import NomadSplits
from stack.targets.nomad.target import NomadTarget

PREDICTOR = """
import os


class Predictor:
    def __init__(self, config):
        self.models = set()

    def predict(self, payload, query_params):
        name = query_params.get("model", "none")
        hit = name in self.models
        self.models.add(name)
        return {"pid": os.getpid(), "hit": hit}
"""

SPEC = """\
project: na
target: nomad
apis:
  - name: models
    predictor: {path: predictor.py}
    networking: {affinity: {query: model}}
    autoscaling: {min_replicas: 3, max_replicas: 3}
"""


def test_the_controller_routes_each_model_to_its_allocation(
    tmp_path: Path, servers: ServerFactory, standin: NomadStandIn
) -> None:
    try:
        traefik_binary()
    except Exception as exc:
        pytest.skip(str(exc))
    root = tmp_path / "na"
    root.mkdir()
    (root / "predictor.py").write_text(PREDICTOR)
    (root / "stack.yaml").write_text(SPEC)
    loaded = load_spec(root)
    plan = plan_nomad(loaded, nomad_addr=standin.address)
    job = json.loads(plan.files["na-models.json"])["Job"]
    env = job["TaskGroups"][0]["Tasks"][0]["Env"]
    assert json.loads(env["STACK_SERVING_CONFIG"])["affinity"] == ["query", "model"]  # replicas report
    config = json.loads(
        json.loads(plan.files["na-autoscaler.json"])["Job"]["TaskGroups"][0]["Tasks"][0]["Env"][
            "STACK_AUTOSCALER_CONFIG"
        ]
    )
    assert config["routed"][0]["affinity"] == ["query", "model"]  # the controller routes
    replicas = [servers.serving(root / "predictor.py", api="models", affinity=["query", "model"]) for _ in range(3)]
    standin.service_registrations["na-models"] = [
        {
            "ID": f"_nomad-task-{i}",
            "ServiceName": "na-models",
            "Namespace": "default",
            "JobID": "na-models",
            "AllocID": f"alloc{i}-0000-0000",
            "NodeID": "node-1",
            "Datacenter": "dc1",
            "Tags": job["TaskGroups"][0]["Services"][0]["Tags"],
            "Address": "127.0.0.1",
            "Port": replica.port,
        }
        for i, replica in enumerate(replicas)
    ]
    api = NomadApi(NomadSettings.from_env(standin.address))
    splits = NomadSplits(api, "na")
    routes = GatewayRoutes(config_of(loaded), NomadRouteSink(splits), splits.overrides, dict)
    fleet = NomadFleet(api, "na")

    async def replace(*_: object) -> None:
        raise AssertionError("Nomad replaces its own allocations: the controller never does")

    liveness = Liveness(fleet.probe_targets, replace, on_affinity=lambda r, rep: routes.observe(r.api, r.url, rep))
    routes_dir = tmp_path / "routes"
    render_variable(api, routes_dir, "na")
    url = start_gateway(plan, standin, routes_dir, servers, "na") + "/models"
    until(lambda: _post(url, None) is not None, "Traefik to route the API from the catalogue", 30)
    models = [f"m{i}" for i in range(6)]

    async def control_pass() -> None:  # what the controller's fleet and probes do every 2 s
        found = await asyncio.to_thread(fleet.registered, ["models"])
        async with aiohttp.ClientSession() as session:
            for health in liveness.health.values():
                health.asked = 0.0
            await liveness.tick(session)
        routes.publish(found)

    def pinned() -> bool:
        for model in models:
            _post(url, model)  # balanced at first: some replica serves it and says so
        asyncio.run(control_pass())
        render_variable(api, routes_dir, "na")
        return all(len({_post(url, m)["pid"] for _ in range(5)}) == 1 for m in models)

    routes_now = lambda: api.get_variable("nomad/jobs/na-traefik")  # noqa: E731
    until(pinned, lambda: f"each model's requests on one allocation; routes: {routes_now()}", 30)
    variable = api.get_variable("nomad/jobs/na-traefik") or {}
    assert "Query(`model`, `m0`)" in variable["routes"] and "na-models-strip@nomad" in variable["routes"]
    assert len({_post(url, m)["pid"] for m in models}) > 1  # spread over the allocations
    # What the controller writes for `stack status --nomad` (ControlPlane.affinity through affinity_out).
    names = {t.url: t.replica for t in fleet.probe_targets()}
    api.put_variable(
        affinity_variable("na"), {"status": json.dumps({"models": asdict(routes.affinity_status("models", names))})}
    )
    shown = NomadTarget(loaded, settings=NomadSettings.from_env(standin.address)).status().apis[0].affinity
    assert shown is not None and set(models) <= set(shown.models)
    assert set(shown.held) <= {f"alloc{i}-0" for i in range(3)}  # the allocations, as status names them
    assert standin.problems == []


def _post(url: str, model: str | None) -> dict | None:
    try:
        response = requests.post(url, params={"model": model} if model else None, json={}, timeout=5)
    except requests.RequestException:
        return None
    return response.json() if response.status_code == 200 else None
