"""Splitters and canaries on the Nomad target, as contract tests.

The cluster is the schema-checking stand-in of Nomad's HTTP API; the gateway is
the real Traefik binary with the flags of the planned Traefik job: its Nomad
provider reads the stand-in's service catalogue (the tags of the planned API
jobs, pointing at real replicas) and its file provider the splitter routes from
the Nomad Variable, as Nomad's template would render them.
"""

from __future__ import annotations

import asyncio
import collections
import json
import math
import shutil
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests
import yaml
from common import EXAMPLES, Server, ServerFactory
from nomad_gateway import render_variable, start_gateway
from nomad_standin import NomadStandIn
from waits import until

from nomad_schema import schema_errors
from stack.control.autoscale.config import config_of
from stack.control.canary import ROLLED_BACK, CanaryRunner
from stack.control.canary_sources import Counters, NoData
from stack.control.runtime import ControlPlane, ControlSettings
from stack.errors import StackError
from stack.spec import load_spec
from stack.splits import splitters_of
from stack.targets import open_control
from stack.targets.local.traefik import traefik_binary
from stack.targets.nomad.api import NomadApi
from stack.targets.nomad.connection import NomadSettings
from stack.targets.nomad.plan import plan as plan_nomad
from stack.targets.nomad.settings import NomadControlSettings
from stack.targets.nomad.splits import NomadCanaryStore, NomadSplits, rolling_out, routes_variable
from stack.targets.nomad.target import NomadTarget

SPEC = """\
project: ns
target: nomad
apis:
  - {name: v1, predictor: {path: predictor.py, config: {greeting: v1}}, autoscaling: {min_replicas: 1, max_replicas: 1}}
  - {name: v2, predictor: {path: predictor.py, config: {greeting: v2}}, autoscaling: {min_replicas: 1, max_replicas: 1}}
splitters:
  - name: iris
    apis: [{name: v1, weight: 80}, {name: v2, weight: 20}]
"""


def project(tmp_path: Path, extra: str = "") -> Path:
    root = tmp_path / "ns"
    shutil.copytree(EXAMPLES / "echo", root, ignore=shutil.ignore_patterns(".stack"))
    (root / "stack.yaml").write_text(SPEC + extra)
    return root


@pytest.fixture
def standin() -> Iterator[NomadStandIn]:
    started = NomadStandIn().start()
    yield started
    started.stop()


def test_the_plan_renders_the_splitters_for_the_gateway(tmp_path: Path) -> None:
    plan = plan_nomad(load_spec(project(tmp_path)))
    for name, text in plan.files.items():
        if name.endswith(".json"):
            assert schema_errors(json.loads(text)) == [], name
    routes = yaml.safe_load(plan.files["ns-routes.yml"])
    members = routes["http"]["services"]["ns-split-iris"]["weighted"]["services"]
    assert members == [
        {"name": "ns-split-iris--ns-v1@nomad", "weight": 80},
        {"name": "ns-split-iris--ns-v2@nomad", "weight": 20},
    ]
    # Each API job declares the service its replicas are under that splitter.
    tags = json.loads(plan.files["ns-v2.json"])["Job"]["TaskGroups"][0]["Services"][0]["Tags"]
    assert "traefik.http.services.ns-split-iris--ns-v2.loadbalancer.healthcheck.path=/readyz" in tags
    traefik = json.loads(plan.files["ns-traefik.json"])["Job"]["TaskGroups"][0]["Tasks"][0]
    assert "--providers.file.directory=/local/routes" in traefik["Config"]["args"]
    template = next(t for t in traefik["Templates"] if t["DestPath"] == "local/routes/splits.yml")
    assert 'nomadVarList "nomad/jobs/ns-traefik"' in template["EmbeddedTmpl"] and template["ChangeMode"] == "noop"
    # The autoscaler job runs the canaries and measures the shares.
    assert "ns-autoscaler.json" in plan.files


def greetings(url: str, count: int) -> collections.Counter[str]:
    session = requests.Session()
    return collections.Counter(session.post(url, json={}, timeout=10).json()["greeting"] for _ in range(count))


def test_traefik_splits_nomads_catalogue_and_stack_split_reweights_it(
    tmp_path: Path, servers: ServerFactory, standin: NomadStandIn
) -> None:
    try:
        traefik_binary()
    except Exception as exc:
        pytest.skip(str(exc))
    loaded = load_spec(project(tmp_path))
    plan = plan_nomad(loaded, nomad_addr=standin.address)
    replicas: dict[str, Server] = {}
    for name in ("v1", "v2"):
        replicas[name] = servers.serving(EXAMPLES / "echo" / "predictor.py", api=name, config={"greeting": name})
        job = json.loads(plan.files[f"ns-{name}.json"])["Job"]
        standin.service_registrations[f"ns-{name}"] = [
            {
                "ID": f"_nomad-task-{name}",
                "ServiceName": f"ns-{name}",
                "Namespace": "default",
                "JobID": f"ns-{name}",
                "AllocID": f"alloc-{name}",
                "NodeID": "node-1",
                "Datacenter": "dc1",
                "Tags": job["TaskGroups"][0]["Services"][0]["Tags"],
                "Address": "127.0.0.1",
                "Port": replicas[name].port,
            }
        ]
    api = NomadApi(NomadSettings.from_env(standin.address))
    splits = NomadSplits(api, "ns")
    splits.write_routes(splitters_of(loaded.spec))  # what `stack up --nomad` writes
    routes_dir = tmp_path / "routes"
    render_variable(api, routes_dir)
    url = start_gateway(plan, standin, routes_dir, servers) + "/iris"

    def routed() -> bool:
        try:
            return requests.post(url, json={}, timeout=2).status_code == 200
        except requests.RequestException:
            return False

    until(routed, "Traefik to route the splitter")
    seen = greetings(url, 1000)
    assert abs(seen["v1"] / 1000 - 0.80) <= 0.03, seen

    target = NomadTarget(loaded, settings=NomadSettings.from_env(standin.address))
    target.split("iris", {"v1": 0, "v2": 100})
    render_variable(api, routes_dir)
    until(lambda: set(greetings(url, 20)) == {"v2"}, "the new weights to reach the gateway")
    splitter = target.status().splitters[0]
    assert splitter.weights == {"v1": 0, "v2": 100} and splitter.overridden
    with pytest.raises(StackError, match="splitter iris has no API v3"):
        target.split("iris", {"v3": 1})
    assert standin.problems == []


class StubSource:
    """The canary's counters as Prometheus would report them: v2 fails one request in ten."""

    def __init__(self) -> None:
        self.served = 0

    async def counters(self, apis: list[str]) -> Counters | NoData:
        self.served += 100
        n = self.served
        requests: dict[tuple[str, str, str], float] = {
            ("v2", "r", "200"): 0.9 * n,
            ("v2", "r", "500"): 0.1 * n,
            ("v1", "r", "200"): 9.0 * n,
        }
        buckets: dict[tuple[str, str, float], float] = {}
        for bound in (0.01, math.inf):
            buckets[("v2", "r", bound)], buckets[("v1", "r", bound)] = float(n), 9.0 * n
        return Counters(requests, buckets)

    async def gateway(self, services: list[str]) -> dict[str, float] | NoData:
        return {services[0]: 10.0 * self.served, services[1]: 1.0 * self.served}


def test_a_canary_on_nomad_keeps_its_state_and_weights_in_variables(tmp_path: Path, standin: NomadStandIn) -> None:
    """The autoscaler job's control plane, built from the Nomad adapters (the metrics stubbed as
    Prometheus would report them): its canary writes the weights into the gateway's variable."""
    canary = "    canary: {api: v2, steps: [10, 50, 100], interval: 10s, min_requests: 20}\n"
    loaded = load_spec(project(tmp_path, canary))
    api = NomadApi(NomadSettings.from_env(standin.address))
    config = config_of(loaded, versions={"v1": "a", "v2": "b"})
    settings = ControlSettings(config=config, prometheus_url="http://127.0.0.1:9")
    own = NomadControlSettings(standin.address)

    def weights() -> list[dict[str, Any]]:
        routes = yaml.safe_load((api.get_variable(routes_variable("ns")) or {})["routes"])
        return routes["http"]["services"]["ns-split-iris"]["weighted"]["services"]

    async def scenario() -> None:
        async with aiohttp.ClientSession() as session, open_control("nomad", settings, own)(session) as adapters:
            plane = ControlPlane(replace(adapters, metrics=StubSource()))
            clock = [time.time()]
            plane.canary.clock = lambda: clock[0]
            stopping = asyncio.Event()
            fleet = asyncio.ensure_future(plane.adapters.fleet.run(plane, stopping))
            await asyncio.sleep(0.5)  # the fleet publishes the canary's first step as it starts
            assert [m["weight"] for m in weights()] == [90, 10]
            await plane.canary.tick()
            clock[0] += 10
            await plane.canary.tick()
            stopping.set()
            await fleet
            assert plane.canary.states["iris"].phase == ROLLED_BACK

    asyncio.run(scenario())
    assert [m["weight"] for m in weights()] == [100, 0]
    # `stack status --nomad` reads the canary and the observed shares from the variables.
    status = NomadTarget(loaded, settings=NomadSettings.from_env(standin.address)).status()
    splitter = status.splitters[0]
    assert splitter.canary is not None and splitter.canary.phase == ROLLED_BACK
    assert splitter.weights == {"v1": 100, "v2": 0}
    assert "error rate 10% > max_error_rate 1%" in splitter.canary.decisions[-1]["reason"]
    assert splitter.observed == {"v1": 0.9091, "v2": 0.0909}
    # A restarted autoscaler job takes the state back from the variable.
    again = CanaryRunner(config.splitters, NomadCanaryStore(NomadSplits(api, "ns")), StubSource())
    assert again.states["iris"].phase == ROLLED_BACK
    assert standin.problems == []


def test_a_canary_waits_for_the_nomad_deployment_of_its_new_version(tmp_path: Path, standin: NomadStandIn) -> None:
    loaded = load_spec(project(tmp_path))
    plan = plan_nomad(loaded, nomad_addr=standin.address)
    api = NomadApi(NomadSettings.from_env(standin.address))
    assert rolling_out(api, "ns-v2") is None  # no job, no deployment: nothing holds the canary
    api.register(json.loads(plan.files["ns-v2.json"])["Job"])
    reason = rolling_out(api, "ns-v2")
    assert reason is not None and "ns-v2 is rolling out its new version" in reason
    # The stand-in moves the deployment on at each read: it ends, and the canary may be judged.
    for _ in range(50):
        if rolling_out(api, "ns-v2") is None:
            break
    assert rolling_out(api, "ns-v2") is None
    assert (api.deployment("ns-v2") or {}).get("Status") == "successful"
    assert standin.problems == []


def test_stack_split_before_stack_up_says_to_run_it(tmp_path: Path, standin: NomadStandIn) -> None:
    loaded = load_spec(project(tmp_path))
    target = NomadTarget(loaded, settings=NomadSettings.from_env(standin.address))
    with pytest.raises(StackError, match=r"the gateway of ns has no splitter routes yet; run `stack up --nomad`"):
        target.split("iris", {"v1": 0, "v2": 100})
    assert standin.variables == {}  # nothing was written
