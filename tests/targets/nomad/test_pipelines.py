"""Pipelines on the Nomad target, as contract tests.

No Nomad can run here. The planned jobs go to the schema-checking stand-in of Nomad's HTTP API; the
caller's upstreams template is rendered the way Nomad's template runner does (the `nomadService`
function over the stand-in's service catalogue, for this template's small subset of Go's
text/template); and real replicas read the rendered file: the caller reaches the callee's
registered instance, and the callee at zero through the activator's address.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
from common import ServerFactory
from nomad_standin import NomadStandIn

from nomad_schema import schema_errors
from stack.spec import load_spec
from stack.targets.nomad.api import NomadApi
from stack.targets.nomad.connection import NomadSettings
from stack.targets.nomad.plan import plan as plan_nomad

SPEC = """\
project: np
target: nomad
apis:
  - name: front
    predictor: {path: front.py, timeout: 5s}
    calls: [leaf, sleepy]
    autoscaling: {min_replicas: 1, max_replicas: 1}
  - name: leaf
    predictor: {path: leaf.py}
    networking: {load_balancer: wrr}
    autoscaling: {min_replicas: 1, max_replicas: 1}
  - name: sleepy
    predictor: {path: leaf.py}
    autoscaling: {min_replicas: 0, max_replicas: 1}
"""

FRONT = """
class Predictor:
    def __init__(self, config, apis):
        self.apis = apis

    def predict(self, payload):
        return {"front": self.apis[payload["to"]].predict(payload["body"])}
"""

LEAF = """
class Predictor:
    def __init__(self, config):
        self.name = config["name"]

    def predict(self, payload, headers):
        return {"by": self.name, "echo": payload, "request_id": headers.get("X-Request-ID")}
"""


def render_go_template(text: str, left: str, right: str, services: Callable[[str], list[dict[str, Any]]]) -> str:
    """The subset of Go's text/template the upstreams template uses: `range $i, $s := nomadService
    "NAME"`, `if $i`, `end` and `.Field` of the range's element. Anything else fails the test, so a
    template that grows past what this renders is noticed here."""
    tokens = re.split(f"{re.escape(left)}(.*?){re.escape(right)}", text, flags=re.S)
    out: list[str] = []

    def run(position: int, scope: dict[str, Any], emit: bool) -> int:
        """Render from tokens[position] to its `end`; the position after it."""
        while position < len(tokens):
            literal, action = tokens[position], (tokens[position + 1].strip() if position + 1 < len(tokens) else None)
            if emit:
                out.append(literal)
            position += 2
            if action is None:
                return position
            if action == "end":
                return position
            if found := re.fullmatch(r'range \$(\w+), \$(\w+) := nomadService "([^"]+)"', action):
                index_name, _, service = found.groups()
                items = services(service) if emit else []
                after = run(position, scope, False)  # where the block ends, rendered or not
                for index, item in enumerate(items):
                    run(position, {**scope, index_name: index, ".": item}, True)
                position = after
            elif found := re.fullmatch(r"if \$(\w+)", action):
                position = run(position, scope, emit and bool(scope[found.group(1)]))
            elif found := re.fullmatch(r"\.(\w+)", action):
                if emit:
                    out.append(str(scope["."][found.group(1)]))
            else:
                raise AssertionError(f"the template uses {action!r}, which this renderer does not know")
        return position

    run(0, {}, True)
    return "".join(out)


def registration(service: str, port: int, index: int = 0) -> dict[str, Any]:
    return {
        "ID": f"_nomad-task-{service}-{index}",
        "ServiceName": service,
        "Namespace": "default",
        "JobID": service,
        "AllocID": f"alloc-{service}-{index}",
        "NodeID": "node-1",
        "Datacenter": "dc1",
        "Tags": [],
        "Address": "127.0.0.1",
        "Port": port,
    }


def test_the_planned_upstreams_template_takes_calls_to_the_callees_instances(
    tmp_path: Path, standin: NomadStandIn, servers: ServerFactory
) -> None:
    root = tmp_path / "np"
    root.mkdir()
    (root / "front.py").write_text(FRONT)
    (root / "leaf.py").write_text(LEAF)
    (root / "stack.yaml").write_text(SPEC)
    plan = plan_nomad(load_spec(root), nomad_addr=standin.address)
    api = NomadApi(NomadSettings.from_env(standin.address))
    jobs = {}
    for name in ("front", "leaf", "sleepy", "autoscaler"):
        request = json.loads(plan.files[f"np-{name}.json"])
        assert schema_errors(request) == [], name
        api.register(request["Job"])  # the stand-in checks each against Nomad's OpenAPI file
        jobs[name] = request["Job"]

    # Only the caller has the template; it renders to local/upstreams.json, where its replica reads.
    (front_task,) = jobs["front"]["TaskGroups"][0]["Tasks"]
    (template,) = [t for t in front_task["Templates"] if t["DestPath"] == "local/upstreams.json"]
    assert template["ChangeMode"] == "noop"  # the replica re-reads the file; no restart per change
    config = json.loads(front_task["Env"]["STACK_SERVING_CONFIG"])
    assert config["calls"] == ["leaf", "sleepy"] and config["upstreams_file"] == "/local/upstreams.json"
    for callee in ("leaf", "sleepy"):
        templates = jobs[callee]["TaskGroups"][0]["Tasks"][0].get("Templates") or []
        assert not [t for t in templates if t["DestPath"] == "local/upstreams.json"]
    # The services it asks for are the ones the callee jobs and the activator register.
    asked = set(re.findall(r'nomadService "([^"]+)"', template["EmbeddedTmpl"]))
    registered = {s["Name"] for job in jobs.values() for g in job["TaskGroups"] for s in g.get("Services") or []}
    assert asked == {"np-leaf", "np-sleepy", "np-activator"} and asked <= registered

    def catalogue(service: str) -> list[dict[str, Any]]:
        answer = requests.get(f"{standin.address}/v1/service/{service}", timeout=5)
        answer.raise_for_status()
        return answer.json()

    def render() -> dict[str, Any]:
        text = render_go_template(template["EmbeddedTmpl"], template["LeftDelim"], template["RightDelim"], catalogue)
        return json.loads(text)  # valid JSON for none, one or many instances

    # Nothing registered yet: no servers, and the file is still valid.
    assert render() == {
        "apis": {
            "leaf": {"servers": [], "activators": [], "strategy": "wrr"},
            "sleepy": {"servers": [], "activators": [], "strategy": "p2c"},
        }
    }

    # Two leaf instances and the activator (the real replicas standing in for each), as Nomad lists them.
    leaves = [servers.serving(root / "leaf.py", api="leaf", config={"name": f"leaf-{i}"}) for i in range(2)]
    sleepy = servers.serving(root / "leaf.py", api="sleepy", config={"name": "woken"})
    standin.service_registrations["np-leaf"] = [registration("np-leaf", s.port, i) for i, s in enumerate(leaves)]
    standin.service_registrations["np-activator"] = [registration("np-activator", sleepy.port)]
    rendered = render()
    assert rendered["apis"]["leaf"]["servers"] == [f"http://127.0.0.1:{s.port}" for s in leaves]
    # A callee at zero has no instances: its calls go to the activator's wake-up path for it.
    assert rendered["apis"]["sleepy"] == {
        "servers": [],
        "activators": [f"http://127.0.0.1:{sleepy.port}/__stack/activate/sleepy"],
        "strategy": "p2c",
    }

    # The caller's replica with the planned config, reading the rendered file.
    upstreams = tmp_path / "upstreams.json"
    upstreams.write_text(json.dumps(rendered))
    front = servers.serving(root / "front.py", api="front", calls=config["calls"], upstreams_file=str(upstreams))
    seen = set()
    for n in range(6):
        answer = requests.post(
            f"{front.url}/", json={"to": "leaf", "body": n}, headers={"X-Request-ID": f"np-{n}"}, timeout=30
        )
        assert answer.status_code == 200, answer.text
        leaf = answer.json()["front"]
        assert leaf["echo"] == n and leaf["request_id"] == f"np-{n}"
        seen.add(leaf["by"])
    assert seen == {"leaf-0", "leaf-1"}  # wrr, the callee's strategy, across both instances

    # An instance gone from the catalogue is gone from the next render, and from the caller's calls.
    standin.service_registrations["np-leaf"] = [registration("np-leaf", leaves[1].port, 1)]
    upstreams.write_text(json.dumps(render()))

    def only_the_remaining_one() -> bool:
        answers = [requests.post(f"{front.url}/", json={"to": "leaf", "body": 0}, timeout=30) for _ in range(4)]
        return {a.json()["front"]["by"] for a in answers} == {"leaf-1"}

    deadline = time.monotonic() + 10  # the replica re-reads the file when its mtime changes (4 times a second)
    while not only_the_remaining_one():
        assert time.monotonic() < deadline, "the caller still calls the instance that left"
        time.sleep(0.1)
